"""``python -m schemas`` rewrites the JSON Schema files from the models."""

from schemas._export import write

for path in write():
    print(path.name)
