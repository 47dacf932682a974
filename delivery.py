"""The delivery rules, once: which bytes, header, rows and values a delivery file may hold, and its rows.

ingestion.py checks every delivery file with `parse_delivery`; scoring, training and audit read the
labelled test data with `read_labelled`; the API reads a CSV body with `feature_matrix` and checks
JSON values with `value_problem`. Rules (README, "Ingestion rules"): UTF-8 text (a byte-order mark
allowed), never gzip-compressed, no NUL byte anywhere; lines ending in LF, CRLF or a bare CR (old
Mac exports); a header naming each column once; no row with more fields than the header; values
that are whole numbers as text (`is_whole_text`) from 0 to MAX_VALUE, `exited` 0 or 1; a missing
value (an empty cell or one of NA_STRINGS) keeps its row. Whatever error reading one text raises
(READ_ERRORS) is that text's fault: a BadFile, never a crash of the caller.

numpy and pandas are imported inside the functions that need them: the cycle's idle path imports
this module (through ingestion.py) and must stay fast.
"""
import csv
import io
import math
import re
from decimal import Decimal

import words
from settings import COLUMNS, FEATURES, TARGET

NUMERIC = FEATURES + (TARGET,)
NA_STRINGS = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"]
# Integers above 2**53 cannot round-trip through a float; no real count is that large.
MAX_VALUE = 2**53 - 1

# What is wrong with a value, in the words of every reason that names one.
MISSING = "is missing"
NOT_A_NUMBER = "is not a number"
NOT_FINITE = "is not a finite number"
NEGATIVE = "is negative"
OUT_OF_RANGE = f"is out of range (at most {MAX_VALUE})"
NOT_WHOLE = "is not a whole number"
NOT_BINARY = "is not 0 or 1"

# A whole number as text: an optional sign, ASCII digits, and optionally a point followed by zeros only.
WHOLE_TEXT = re.compile(r"[+-]?[0-9]+(?:\.0*)?")
# Exponent notation: a whole number only when the exact decimal it denotes is one (1e3, 1.5e1, not 1e-400).
EXPONENT_TEXT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]{1,6}")

# What the csv module and pandas may raise on some text: the text's fault, said as a reason. Not a
# blanket `except Exception`: anything else is a bug here, and must show as one.
READ_ERRORS = (csv.Error, ValueError, UnicodeError, OverflowError, MemoryError)  # ValueError: pandas' ParserError too

# The byte checks' reasons for a delivery file, by rule (BadFile.rule): the API words them its own way.
FILE_WORDS = {"empty": "empty file",
              "gzip": "gzip-compressed data, not a plain CSV text file",
              "binary": "binary content (NUL bytes), not a CSV text file"}


class BadFile(Exception):
    """Data that breaks the delivery rules (or cannot be read); the message is the one-line reason,
    a delivery's quarantine reason. `rule` names the byte check that failed ("empty", "gzip",
    "binary"; None for the others), for a caller that words those reasons its own way."""

    def __init__(self, reason, rule=None):
        super().__init__(reason)
        self.rule = rule


# ---------------------------------------------------------------- the checks

def decode(data: bytes) -> str:
    """The text of a delivery's bytes. Refuses an empty file, gzip, a NUL byte anywhere (it would land
    in finaldata.csv), and bytes that are not UTF-8."""
    if not data.strip():
        raise BadFile(FILE_WORDS["empty"], "empty")
    if data[:2] == b"\x1f\x8b":
        raise BadFile(FILE_WORDS["gzip"], "gzip")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise BadFile("UTF-16 text (a UTF-16 byte-order mark), not UTF-8")
    if b"\x00" in data:
        raise BadFile(FILE_WORDS["binary"], "binary")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BadFile(f"not UTF-8 text: undecodable byte at offset {exc.start}") from None


def line_ends(text) -> str:
    """The text with LF line ends where that cannot change a value: a text without a quote has no
    quoted field, so each CRLF and bare CR (old Mac line ends) is a line end and becomes LF. A text
    with quotes is left as it is: the csv module (newline="") and pandas both read CR, LF and CRLF."""
    if "\r" not in text or '"' in text:
        return text
    return text.replace("\r\n", "\n").replace("\r", "\n")


def records(text):
    """The csv module's reader of a text, line ends as pandas reads them (CR, LF, CRLF)."""
    return csv.reader(io.StringIO(text, newline=""))


def header(text) -> list:
    """The column names of a CSV text's first record, spaces stripped."""
    if '"' not in text:  # line_ends made every line end LF
        return [h.strip() for h in text.split("\n", 1)[0].split(",")]
    return [h.strip() for h in next(records(text), [])]


def is_whole_text(value: str) -> bool:
    """Whether a value's text is a whole number (signed): `12`, `+12`, `-3`, `12.`, `12.000`, or in
    exponent notation denoting an exact integer (`1e3`, `1.5e1`, `1200e-2`). Not `12.5`,
    `12.0000000000000001` or `1e-400`, although a float rounds the last two to whole numbers."""
    value = value.strip()
    if WHOLE_TEXT.fullmatch(value):
        return True
    if EXPONENT_TEXT.fullmatch(value):
        exact = Decimal(value)
        return exact == exact.to_integral_value()
    return False


def not_whole_texts(values) -> list:
    """For each text of `values` (str, or None/NaN for a missing value), whether it is present and
    not a whole number as text. Only a text with a point or an exponent can be one."""
    return [isinstance(v, str) and any(ch in v for ch in ".eE") and not is_whole_text(v) for v in values]


def may_hide_fractions(text) -> bool:
    """Whether the rows of a CSV text hold a point or an `e` anywhere: without one, every number in it
    is written in digits, and its float is the whole number its text says."""
    body = text.split("\n", 1)[1] if "\n" in text else text
    return any(ch in body for ch in ".eE")


def check_header(names, required, strict=True):
    """Refuse a header without each of `required` exactly once; when `strict`, also one that repeats any
    column or names one that is not required (else other columns are allowed and ignored)."""
    dupes = [c for c in (sorted(set(names)) if strict else required) if names.count(c) > 1]
    if dupes:
        raise BadFile(f"duplicated column {dupes[0]!r}")
    missing = [c for c in required if c not in names]
    if missing:
        hint = " (the separator must be a comma)" if len(names) == 1 and ";" in names[0] else ""
        raise BadFile(f"missing column {missing[0]!r}{hint}")
    extra = [h for h in names if h not in required] if strict else []
    if extra:
        raise BadFile(f"unexpected column {extra[0]!r}")


def check_field_counts(text, width):
    """Refuse a row with more fields than the header: pandas would take the first column of such a
    file for an index and shift every value one column to the right, silently."""
    if '"' in text:  # quoted fields may hold commas: count with the csv module
        reader = records(text)
        try:
            for number, row in enumerate(reader, 1):
                if len(row) > width:
                    raise BadFile(f"malformed CSV: line {number} has {len(row)} fields, the header has {width}")
        except csv.Error as exc:
            raise BadFile(f"malformed CSV: line {reader.line_num}: {_csv_words(exc)}") from None
        return
    parts = text.split("\n", 2)
    if len(parts) > 1 and parts[1].count(",") + 1 > width:  # the row pandas judges the layout by
        raise BadFile(f"malformed CSV: line 2 has {parts[1].count(',') + 1} fields, the header has {width}")
    lines = text.count("\n") + (0 if text.endswith("\n") else 1) - 1
    if text.count(",") <= lines * (width - 1):  # the fast answer for a well-formed file
        return
    for number, line in enumerate(text.splitlines()[1:], 2):
        if line.count(",") + 1 > width:
            raise BadFile(f"malformed CSV: line {number} has {line.count(',') + 1} fields, the header has {width}")


def _csv_words(exc) -> str:
    """The csv module's complaint, in the words of a reason."""
    text = str(exc)
    limit = re.fullmatch(r"field larger than field limit \((\d+)\)", text)
    return f"a field longer than {limit.group(1)} characters" if limit else text


def read_error(exc) -> BadFile:
    """The reason for one of READ_ERRORS raised while reading a text."""
    if isinstance(exc, MemoryError):
        return BadFile("too large to read in memory")
    if isinstance(exc, csv.Error):
        return BadFile(f"malformed CSV: {_csv_words(exc)}")
    lines = str(exc).strip().splitlines()
    return BadFile(f"malformed CSV: {lines[-1] if lines else words.error_text(exc)}")


def out_of_rule(values):
    """Where a float64 array breaks the value rules: missing, not finite, negative, above MAX_VALUE or
    not a whole number (a boolean array)."""
    import numpy as np

    return ~np.isfinite(values) | (values < 0) | (values > MAX_VALUE) | (np.floor(values) != values)


def value_problem(v):
    """What is wrong with one feature value (MISSING, NOT_A_NUMBER, ...), or None for a whole number from
    0 to MAX_VALUE. `v` is a number, None (missing) or anything else (not a number)."""
    if v is None:
        return MISSING
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return NOT_A_NUMBER
    if v != v:
        return MISSING
    if v in (math.inf, -math.inf):
        return NOT_FINITE
    if v < 0:
        return NEGATIVE
    if v > MAX_VALUE:
        return OUT_OF_RANGE
    return NOT_WHOLE if v % 1 or isinstance(v, NotWhole) else None


class NotWhole(float):
    """A JSON number whose text is not a whole number (`json_number`), although its float may be one."""

    def __new__(cls, text):
        self = super().__new__(cls, text)
        self.text = text
        return self


def json_number(text):
    """A JSON number with a fraction or an exponent (json.loads' parse_float): its float, or a
    NotWhole when its text is not a whole number (`1e-400`, `12.0000000000000001`)."""
    return float(text) if is_whole_text(text) else NotWhole(text)


# ---------------------------------------------------------------- a delivery file

def parse_delivery(data: bytes):
    """Check one delivery file's bytes against the schema; return its rows as a DataFrame.

    Raises BadFile with a one-line reason, whatever the bytes.
    """
    try:
        return _parse_delivery(data)
    except READ_ERRORS as exc:
        raise read_error(exc) from None


def _parse_delivery(data):
    import pandas as pd

    text = line_ends(decode(data))
    names = header(text)
    check_header(names, COLUMNS)
    check_field_counts(text, len(names))
    na_values = {c: NA_STRINGS for c in NUMERIC} | {"corporation": [""]}
    df = pd.read_csv(io.StringIO(text), dtype={"corporation": object}, keep_default_na=False,
                     skipinitialspace=True, na_values=na_values)
    df.columns = [c.strip() for c in df.columns]
    if df.empty:
        raise BadFile("header only, no rows")
    if not all(_valid_numbers(df[col], col == TARGET) for col in NUMERIC) or _fractions_in_text(pd, df, text, na_values):
        # Only a bad file pays for the slow, value-by-value reading that names the first bad value.
        raise BadFile(_first_bad_value(pd, text, na_values))
    if "\r" in text:
        _check_names_keep_their_line_ends(df["corporation"])
    out = {"corporation": df["corporation"].where(df["corporation"].notna(), None)}
    for col in NUMERIC:
        out[col] = df[col].astype("Int64")
    return pd.DataFrame(out, columns=list(COLUMNS))


def _check_names_keep_their_line_ends(names):
    """Refuse a name holding a carriage return that is not part of a CRLF: finaldata.csv's lines end
    in LF, so such a name is written unquoted and read back as two rows (pandas quotes a field for
    the characters of its line end only). A CRLF or LF inside a quoted name is kept, quoted."""
    lone = names.str.contains("\r(?!\n)", regex=True, na=False).to_numpy()
    if lone.any():
        i = int(lone.nonzero()[0][0])
        raise BadFile(f"column 'corporation', row {i + 1}: value {names.iloc[i]!r} holds a carriage return "
                      "that does not end a line (CR without LF)")


def _fractions_in_text(pd, df, text, na_values) -> bool:
    """Whether a column pandas read as floats holds a text that is not a whole number (`1e-400`,
    `12.0000000000000001`), its float one. A column read as integers was digits only."""
    floats = [col for col in NUMERIC if df[col].dtype.kind == "f"]
    if not floats or not may_hide_fractions(text):
        return False
    raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                      na_values=na_values, usecols=lambda c: c.strip() in floats)
    return any(any(not_whole_texts(raw[col].to_numpy())) for col in raw.columns)


def _valid_numbers(series, binary) -> bool:
    """Whether a parsed column holds only missing values and whole numbers in range (0/1 if binary)."""
    import numpy as np

    if series.dtype.kind not in "iuf":
        return False
    values = series.to_numpy(dtype="float64")
    values = values[~np.isnan(values)]
    if binary:
        return bool(np.isin(values, (0.0, 1.0)).all())
    return not out_of_rule(values).any()


def _first_bad_value(pd, text, na_values) -> str:
    """The reason naming the first value that breaks the schema, read column by column as text."""
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True,
                     na_values=na_values)
    df.columns = [c.strip() for c in df.columns]
    for col in NUMERIC:
        raw = df[col].str.strip()
        values = pd.to_numeric(raw, errors="coerce")
        present = raw.notna()
        checks = [
            (present & values.isna(), NOT_A_NUMBER),
            (present & ~values.isna() & ~values.abs().lt(float("inf")), NOT_FINITE),
            (present & (values < 0), NEGATIVE),
            (present & (values > MAX_VALUE), OUT_OF_RANGE),
            (present & values.notna() & ((values % 1 != 0) | pd.Series(not_whole_texts(raw.to_numpy()), index=raw.index)),
             NOT_WHOLE),
        ]
        if col == TARGET:
            checks.append((present & ~values.isin([0, 1]), NOT_BINARY))
        for test, what in checks:
            if test.any():
                i = int(test.to_numpy().nonzero()[0][0])
                return f"column {col!r}, row {i + 1} (line {i + 2}): value {raw.iloc[i]!r} {what}"
    return "values that are not whole non-negative numbers"


def training_frame(df):
    """Features and target of the rows with no missing value, as float64 and int64."""
    complete = df.dropna(subset=list(FEATURES) + [TARGET])
    return complete[list(FEATURES)].astype("float64"), complete[TARGET].astype("int64")


def read_labelled(path):
    """Read a labelled CSV (the test data) with the delivery rules; return (features, target) of its
    complete rows. Raises BadFile: the file cannot be read, or breaks the rules."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BadFile(f"cannot read test data {path}: {exc.strerror}") from None
    try:
        df = parse_delivery(data)
    except BadFile as exc:
        raise BadFile(f"test data {path} is not usable: {exc}") from None
    return training_frame(df)


# ---------------------------------------------------------------- rows to score

def feature_matrix(data: bytes):
    """The float64 matrix of the three features of a CSV text to score (other columns ignored).

    The delivery rules, with every value required: a missing value cannot be scored. Raises BadFile,
    whatever the bytes.
    """
    try:
        return _feature_matrix(data)
    except READ_ERRORS as exc:
        raise read_error(exc) from None


def _feature_matrix(data):
    import numpy as np
    import pandas as pd

    text = line_ends(decode(data))
    names = header(text)
    check_header(names, FEATURES, strict=False)
    cols = [names.index(c) for c in FEATURES]
    check_field_counts(text, len(names))
    # pandas returns the used columns in file order; `order` puts them in FEATURES order.
    order = [sorted(cols).index(c) for c in cols]
    common = dict(header=0, usecols=cols, skipinitialspace=True, keep_default_na=False,
                  na_values=list(NA_STRINGS), skip_blank_lines=False)
    raw = None
    try:  # the common case: every value parses as a number
        X = pd.read_csv(io.StringIO(text), dtype=np.float64, **common).to_numpy()[:, order]
    except ValueError as exc:  # find the value that does not
        if isinstance(exc, pd.errors.ParserError):
            raise
        raw = pd.read_csv(io.StringIO(text), dtype=str, **common).iloc[:, order]
        raw = raw.apply(lambda s: s.str.strip())
    if raw is not None:
        values = raw.apply(pd.to_numeric, errors="coerce")
        for j in range(len(FEATURES)):
            wrong = raw.iloc[:, j].notna() & values.iloc[:, j].isna()
            if wrong.any():
                i = int(wrong.to_numpy().nonzero()[0][0])
                raise BadFile(f"column {FEATURES[j]!r}, row {i + 1} (line {i + 2}): "
                              f"value {raw.iloc[i, j]!r} {NOT_A_NUMBER}")
        X = values.to_numpy(dtype=np.float64)
    if len(X) == 0:
        raise BadFile("header only, no rows")
    X = np.ascontiguousarray(X, dtype=np.float64)
    texts = None
    if may_hide_fractions(text):  # a point or an exponent somewhere: check the texts of the numbers
        texts = raw if raw is not None else pd.read_csv(io.StringIO(text), dtype=str, **common).iloc[:, order]
        texts = np.array([not_whole_texts(texts.iloc[:, j].to_numpy()) for j in range(len(FEATURES))]).T

    def show(i, j):
        return repr(float(X[i, j])) if raw is None else repr(raw.iloc[i, j])

    def show_text(i, j):
        frame = raw if raw is not None else pd.read_csv(io.StringIO(text), dtype=str, **common).iloc[:, order]
        return repr(str(frame.iloc[i, j]).strip())

    _check_matrix(X, show, texts, show_text)
    return X


def _check_matrix(X, show, texts=None, show_text=None):
    """Refuse the first value of X (in row order) that breaks the value rules; `show(i, j)` renders
    it. `texts`, if given, marks the values whose text is not a whole number (`show_text` renders them)."""
    import numpy as np

    bad = out_of_rule(X)
    if texts is not None:
        bad = bad | texts
    if not bad.any():
        return
    i, j = (int(k) for k in np.argwhere(bad)[0])
    what = value_problem(float(X[i, j]))
    if what is None:  # its float is whole; its text is not
        what, show = NOT_WHOLE, show_text
    value = "" if what == MISSING else f" {show(i, j)}"
    raise BadFile(f"column {FEATURES[j]!r}, row {i + 1} (line {i + 2}): value{value} {what}")
