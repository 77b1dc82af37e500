"""A generic English word list for the pre-trained base's tokenizer (written for clinkd, no outside source).

The corpus itself uses a few dozen words; these give the byte-level BPE merges for ordinary English, so a later
fine-tune's text (any text: every byte is in the alphabet) is not spelt letter by letter. No benchmark class or
modality name is in it (``tests/pretrain/test_pretrain.py``).
"""

WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
    """
    the a an and or but if then than so as at by for from in into of on onto off out over under to up down with
    without about above below between behind beside near far left right top bottom middle centre center side
    edge corner inside outside around across along through after before during while until since again once
    twice here there where when what which who whom whose why how all any both each every few many more most
    much some such no not none nothing something anything everything only own same other another one two three
    four five six seven eight nine ten first second third last next new old big small large little long short
    high low wide narrow thick thin round flat sharp smooth rough soft hard light heavy bright pale dim clear
    plain empty full open closed near early late young quick slow easy simple main whole half part parts piece
    shape shapes form line lines point points area areas region regions place space size colour color pattern
    picture pictures image images photo view scene frame figure object objects item items thing things group
    number numbers count total sum list order row rows column columns grid level step steps stage way kind type
    sort set pair lot example answer question word words name names sentence text note page book letter story
    is are was were be been being am has have had do does did done can could will would shall should may might
    must need see sees saw seen look looks looked find finds found show shows shown give gives given take takes
    took make makes made get gets got put keep keeps hold holds move moves turn turns start stop begin end ends
    use uses used call called tell told say says said ask asked answer answered know known think thought seem
    seems appear appears become became come comes came go goes went leave left stay stays lie lies sit sits
    stand stands run runs walk walks draw draws drawn paint painted mark marked touch touches cover covers
    covered meet meets join joins split cut fill filled grow grows change changes match matches describe
    describes describing locate locates name named point pointed contain contains contained include includes
    red green blue yellow orange purple white black grey gray brown pink dark
    striped dotted spotted checked wavy solid hollow filled outline
    circle square triangle ring cross blob star line box rectangle oval curve arc dot dots stripe stripes
    water air fire earth sun moon sky cloud rain snow wind tree leaf flower grass field road river sea lake
    hill rock sand wood house home room door window wall floor roof table chair bed lamp clock cup plate bowl
    bottle glass paper pen car bus train ship plane bike city town street shop school office market garden park
    day night morning evening week month year time hour minute moment today tomorrow yesterday
    man woman child people person friend family mother father brother sister dog cat bird fish horse cow
    food bread milk tea coffee apple egg rice fruit sugar salt
    good bad better best worse worst right wrong true false yes maybe very quite rather almost also too just
    still even already soon often always never sometimes usually together alone apart away back forward
    this that these those it its they them their we our you your he she his her i me my
    """.split()
    )
)


# General medical-imaging vocabulary (anatomy, findings, modalities, reading and reporting words), written for
# clinkd, so that a fine-tune on medical text finds its words whole in the base's tokenizer (only the ``scan``
# look's tokenizer learns from it; the corpus itself never uses these words).
MEDICAL_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
    """
    medical clinical patient image scan study series slice axial coronal sagittal frontal lateral view projection
    ct mr mri pet spect x-ray radiograph radiography ultrasound sonography doppler endoscopy colonoscopy
    gastroscopy dermoscopy dermatoscope fundus retina retinal ophthalmoscopy mammography angiography fluoroscopy
    contrast enhanced enhancing enhancement uptake tracer echo echoes echogenic anechoic hypoechoic hyperechoic
    isoechoic attenuation density dense hypodense hyperdense signal intensity intense hyperintense hypointense
    weighted t1 t2 flair diffusion bright dark faint warm hot cold mottled striated speckled glossy patchy
    homogeneous heterogeneous well-defined ill-defined ring ring-enhancing thick-walled thin-walled calcified
    head neck brain skull scalp cortex ventricle ventricles thalamus cerebellum brainstem hippocampus pituitary
    sinus orbit eye lens optic disc cup macula fovea vessel vessels artery arteries vein veins capillary aorta
    heart atrium cardiac chest thorax lung lungs lobe bronchus trachea pleura rib ribs spine vertebra vertebral
    diaphragm mediastinum abdomen abdominal pelvis liver hepatic gallbladder bile duct pancreas spleen stomach
    gastric bowel intestine colon rectum duodenum esophagus kidney kidneys renal ureter bladder adrenal prostate
    uterus ovary breast thyroid lymph node nodes muscle bone bones joint tendon skin dermis epidermis hair nail
    mucosa mucosal lumen fold folds papilla villi wall tissue fat fluid blood portal lobar segmental
    lesion lesions mass masses tumor tumour tumors nodule nodules cyst cysts polyp polyps ulcer ulcers stone stones
    calculus calcification calcifications hemorrhage haemorrhage bleeding hematoma infarct infarction ischemia
    edema effusion abscess cavity cavities necrosis necrotic metastasis metastases lymphoma carcinoma cancer
    malignant benign melanoma nevus naevus mole freckle keratosis scar wart exudate exudates cotton wool spot spots
    aneurysm stenosis thrombus embolism fracture pneumonia consolidation atelectasis fibrosis cirrhosis
    inflammation infection erosion lesion-free normal abnormal abnormality abnormalities finding findings
    diagnosis diagnose diagnostic impression suspected likely consistent suggest suggests showing shows seen
    visible present absent located locate localise localize bounding box boxes region regions classify
    classification describe description caption analyse analyze analysis summarise summarize summary report
    upper lower central peripheral proximal distal anterior posterior superior inferior medial bilateral
    unilateral irregular oval round lobulated spiculated small medium large tiny huge focal diffuse multiple
    single solitary photograph photo
    """.split()
    )
)
