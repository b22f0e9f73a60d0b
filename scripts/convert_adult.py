"""Convert the UCI Adult files into the Parquet file shipped in jobs/datasets/.

python scripts/convert_adult.py ../shared/data/adult jobs/datasets/adult.parquet
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

COLUMNS = [
    ("age", pa.int64()),
    ("workclass", pa.string()),
    ("fnlwgt", pa.int64()),
    ("education", pa.string()),
    ("education_num", pa.int64()),
    ("marital_status", pa.string()),
    ("occupation", pa.string()),
    ("relationship", pa.string()),
    ("race", pa.string()),
    ("sex", pa.string()),
    ("capital_gain", pa.int64()),
    ("capital_loss", pa.int64()),
    ("hours_per_week", pa.int64()),
    ("native_country", pa.string()),
    ("income", pa.string()),
]


def read(path: Path) -> list[dict[str, object]]:
    rows = []
    for line in path.read_text().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(COLUMNS):
            continue  # blank lines and the test file's "|1x3 Cross validator" header
        row: dict[str, object] = {}
        for (name, typ), value in zip(COLUMNS, fields, strict=True):
            if value == "?":
                row[name] = None
            elif typ == pa.int64():
                row[name] = int(value)
            else:
                row[name] = value.rstrip(".") if name == "income" else value
        rows.append(row)
    return rows


def main(src: str, dst: str) -> None:
    rows = read(Path(src) / "adult.data") + read(Path(src) / "adult.test")
    schema = pa.schema(COLUMNS)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, dst, compression="zstd", compression_level=19)
    print(f"{table.num_rows} rows -> {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
