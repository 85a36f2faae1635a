"""STS-B, the Semantic Textual Similarity Benchmark (Cer et al., 2017): how similar are two
sentences, on a 0 to 5 scale? A regression task; GLUE scores it by Pearson and Spearman
correlation (Wang et al., 2019, Table 1).

train/dev: a header, then index, genre, filename, year, old_index, source1, source2, sentence1,
sentence2, score. test: the same 9 columns without the score.
"""
from glue.task import Task, TaskFile
from metrics import pearson, spearman

STSB = Task(
    name="stsb",
    dir_name="STS-B",
    files={
        "train": TaskFile("train.tsv", header=True, num_columns=10, text_a=7, text_b=8, label=9, examples=5749,
                          size=984099, sha256="41c4d978b6162abdcada7e49a982211954cca5459c228db478af333124b257a2"),
        "dev": TaskFile("dev.tsv", header=True, num_columns=10, text_a=7, text_b=8, label=9, examples=1500,
                        size=276928, sha256="fe7dc0632a5033562f3cadff991f6e8d9b9b6311861660e78c3c82eb7db67f59"),
        "test": TaskFile("test.tsv", header=True, num_columns=9, text_a=7, text_b=8, label=None, examples=1379,
                         size=292587, sha256="16b4223d7d44a644fbc10f1b449472cfe81e1715fb07cf44023b0aa88ce856eb"),
    },
    num_labels=1,
    metrics=(("pearson", pearson), ("spearman", spearman)),
    headline="pearson",
    archive="STS-B.zip",
    score_range=(0.0, 5.0),
)
