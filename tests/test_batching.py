import torch
from PIL import Image

from clinkd.batching import (
    IGNORE_INDEX,
    PromptCollator,
    TrainCollator,
    assistant_labels,
    build_messages,
    training_examples,
)
from clinkd.data.records import Sample, Turn


def _sample(tmp_path, name, turns):
    path = tmp_path / f"{name}.png"
    Image.new("RGB", (112, 112), (90, 90, 90)).save(path)
    return Sample(name, path, "ct", [Turn(q, a) for q, a in turns])


def test_assistant_labels_cover_each_answer_and_its_end_token():
    header, end = [7, 8], 9
    ids = torch.tensor([[1, 7, 8, 4, 5, 9, 2, 7, 8, 6, 9, 0]])
    mask = torch.tensor([[1] * 11 + [0]])
    labels = assistant_labels(ids, mask, header, end)
    assert labels.tolist() == [[-100, -100, -100, 4, 5, 9, -100, -100, -100, 6, 9, -100]]


def test_train_collator_labels_are_exactly_the_answer_tokens(tmp_path, tiny_processor):
    samples = [
        _sample(tmp_path, "ct_a", [("Where is the liver?", "<ref>liver</ref><box>(1,2),(30,40)</box>")]),
        _sample(tmp_path, "ct_b", [("What is it?", "Right kidney"), ("And here?", "liver")]),
    ]
    batch = TrainCollator(tiny_processor)(training_examples(samples, "multi"))
    tokenizer = tiny_processor.tokenizer
    decoded = [tokenizer.decode(row[row != IGNORE_INDEX]) for row in batch["labels"]]
    assert decoded[0] == "<|object_ref_start|>liver<|object_ref_end|><|box_start|>(1,2),(30,40)<|box_end|><|im_end|>"
    assert decoded[1] == "Right kidney<|im_end|>liver<|im_end|>"
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 8, 8]]


def test_split_mode_makes_one_example_per_turn(tmp_path):
    sample = _sample(tmp_path, "ct_a", [("q1", "a1"), ("q2", "a2")])
    assert [ex.turns for ex in training_examples([sample], "split")] == [(Turn("q1", "a1"),), (Turn("q2", "a2"),)]
    assert len(training_examples([sample], "multi")) == 1


def test_messages_put_the_image_in_the_first_turn_only():
    messages = build_messages([Turn("q1 <box>(1,2),(3,4)</box>", "a"), Turn("q2", "b")], "qwen2-vl", with_answers=False)
    assert [m["role"] for m in messages] == ["user", "user"]
    assert messages[0]["content"][0] == {"type": "image"}
    assert messages[0]["content"][1]["text"] == "q1 <|box_start|>(1,2),(3,4)<|box_end|>"
    assert all(part["type"] == "text" for part in messages[1]["content"])


def test_prompt_collator_left_pads_and_ends_with_assistant_header(tmp_path, tiny_processor):
    samples = [
        _sample(tmp_path, "ct_a", [("Where is the liver in this image?", "x")]),
        _sample(tmp_path, "ct_b", [("Why?", "y")]),
    ]
    batch = PromptCollator(tiny_processor)(samples)
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()
    tail = tiny_processor.tokenizer.decode(batch["input_ids"][0])
    assert tail.endswith("<|im_start|>assistant\n")
