"""MRPC, the Microsoft Research Paraphrase Corpus (Dolan & Brockett, 2005): is sentence B a
paraphrase of sentence A? GLUE scores it by F1 of the paraphrase class and accuracy (Wang et al.,
2019, Table 1). GLUE does not host MRPC: glue/download.py builds these files from SentEval's copy.

train/dev: Quality, #1 ID, #2 ID, #1 String, #2 String, after a header that starts with a UTF-8 BOM.
test: index, #1 ID, #2 ID, #1 String, #2 String (no label).
"""
from glue.task import Task, TaskFile
from metrics import accuracy, f1

MRPC = Task(
    name="mrpc",
    dir_name="MRPC",
    files={
        "train": TaskFile("train.tsv", header=True, num_columns=5, text_a=3, text_b=4, label=0, examples=3668,
                          size=941471, sha256="69abcedee3cf738c6ce58d772e43e1b7cdf5b4edee4aceda459c0d9f4e5599f3"),
        "dev": TaskFile("dev.tsv", header=True, num_columns=5, text_a=3, text_b=4, label=0, examples=408,
                        size=105616, sha256="9e8f284788040f7c9ecde2e1b3c07237c756f926bd9ef8548ef5d34b56f69f17"),
        "test": TaskFile("test.tsv", header=True, num_columns=5, text_a=3, text_b=4, label=None, examples=1725,
                         size=445335, sha256="aee460ceda833926b8ab2ad952d399f5cf8bc9335cff19afcac03dc449558622"),
    },
    num_labels=2,
    metrics=(("f1", f1), ("accuracy", accuracy)),
    headline="f1",
    label_names=("not_equivalent", "equivalent"),
    archive=None,
)
