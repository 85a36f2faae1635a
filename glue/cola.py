"""CoLA, the Corpus of Linguistic Acceptability (Warstadt et al., 2019): is the sentence
grammatical? GLUE scores it by Matthews correlation (Wang et al., 2019, Table 1); we add accuracy.

train/dev: no header; source, label, original label mark, sentence. dev.tsv has no final newline.
test: a header `index<TAB>sentence`, then index and sentence (no label).
"""
from glue.task import Task, TaskFile
from metrics import accuracy, matthews

COLA = Task(
    name="cola",
    dir_name="CoLA",
    files={
        "train": TaskFile("train.tsv", header=False, num_columns=4, text_a=3, text_b=None, label=1, examples=8551,
                          size=428590, sha256="cb368ebeb9f27d7ad03720d27ddc95687a311bdb100781a2fe59a5f5b1bc0624"),
        "dev": TaskFile("dev.tsv", header=False, num_columns=4, text_a=3, text_b=None, label=1, examples=1043,
                        size=53717, sha256="8c013e21dc39957cac37378d87bebe225b694a0d5fe13eded66c2856628833fd"),
        "test": TaskFile("test.tsv", header=True, num_columns=2, text_a=1, text_b=None, label=None, examples=1063,
                         size=48788, sha256="3b4df85f7a9a0633574b38d181e18090ac961a24b18fb6bcd74999ddea8ad0b8"),
    },
    num_labels=2,
    metrics=(("matthews", matthews), ("accuracy", accuracy)),
    headline="matthews",
    label_names=("unacceptable", "acceptable"),
    archive="CoLA.zip",
)
