"""The xlsx reader below the cell level (issue 24, items 4 and 8): values as openpyxl reads them, hostile cells
refused with one line, and structure-aware fuzzing of the cell XML.

read_split streams the first worksheet itself (jax_impl/task/splits.py). The values it reads must be openpyxl's
(`load_workbook(read_only=True, data_only=True)`, `values_only=True`) for every workbook we write and for the
upstream fixtures; a damaged cell (a shared-string index out of range, a number or boolean holding text, a bad
reference or row number, rows out of order, a chartsheet first) is a one-line UserError where openpyxl gave a
traceback or silently skipped rows; and a sheet whose last row is numbered 1,048,576 is read in milliseconds
(openpyxl pads every empty row, each as wide as the sheet's declared dimension: minutes).

The fuzzer mutates the cell XML of two small valid workbooks (ours: inline strings without references;
openpyxl-style: shared strings, references, rich text, a third column of other types): cell type attributes,
references, row numbers, shared-string indices, values and element nesting. Each mutated file is read by
read_split and by the openpyxl reading it replaced: read_split returns a split or raises a one-line UserError
naming the file, never another exception or a warning, within seconds; where both read a split, the splits
are equal (a harmless mutation reads the same rows). HYPOTHESIS_PROFILE=long draws many more examples.
"""

from __future__ import annotations

import copy
import os
import re
import time
import warnings
import zipfile
from contextlib import closing
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import openpyxl
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from jax_impl.errors import UserError
from jax_impl.files import xlsx
from jax_impl.task.pointer import Split, TaskShape, pointer_targets
from jax_impl.task.splits import (
    INPUT_COLUMN,
    TARGET_COLUMN,
    _check_split,
    _FirstWorksheet,
    _parse_int_list,
    read_split,
    write_split,
)

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
M = f"{{{xlsx.XLSX_NS}}}"
SHEET = "xl/worksheets/sheet1.xml"
STRINGS = "xl/sharedStrings.xml"
ROWS = np.array([[8, 9, 5, 1, 3, 2, 9, 4, 7, 1], [1, 2, 3, 4, 0, 5, 6, 7, 8, 2], [0, 0, 9, 9, 2, 9, 9, 0, 0, 1],
                 [5, 3, 4, 5, 0, 4, 7, 9, 5, 1], [9, 5, 0, 3, 3, 5, 8, 9, 7, 3]], np.int32)
SPLIT = Split(ROWS, pointer_targets(ROWS).astype(np.float32))


# --------------------------------------------------------------------------- the reference reading: openpyxl


def openpyxl_cells(path: Path) -> dict[int, dict[int, object]]:
    """{row: {column: value}} of the first worksheet's non-empty cells, as openpyxl reads them."""
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        ws = wb.worksheets[0]
        ws.reset_dimensions()  # the values, not the declared dimension's padding
        cells = {n: {c: v for c, v in enumerate(row, start=1) if v is not None}
                 for n, row in enumerate(ws.iter_rows(values_only=True), start=1)}
    finally:
        wb.close()
    return {n: row for n, row in cells.items() if row}


def our_cells(path: Path) -> dict[int, dict[int, object]]:
    with zipfile.ZipFile(path) as archive:
        sheet = _FirstWorksheet(archive, path)
        with closing(sheet.rows()) as rows:
            cells = {n: {c: sheet.value(cell, "") for c, cell in row.items()} for n, row in rows}
    cells = {n: {c: v for c, v in row.items() if v is not None} for n, row in cells.items()}
    return {n: row for n, row in cells.items() if row}


def openpyxl_split(path: Path, shape: TaskShape = TaskShape(5, 2)) -> Split:  # noqa: B008 - a frozen dataclass
    """read_split as it was, on openpyxl's read-only reader (any exception: the reference could not read it)."""
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = wb.worksheets[0].iter_rows(values_only=True)
        header = [h.strip() if isinstance(h, str) else h for h in next(rows)]
        i_col, t_col = header.index(INPUT_COLUMN), header.index(TARGET_COLUMN)
        inputs, targets, numbers = [], [], []
        for number, row in enumerate(rows, start=2):
            if row is None or all(c is None for c in row):
                continue
            x, t = (row[c] if c < len(row) else None for c in (i_col, t_col))
            inputs.append(_parse_int_list(x, path, number, INPUT_COLUMN, shape.input_dim, "x"))
            targets.append(_parse_int_list(t, path, number, TARGET_COLUMN, 1, "x")[0])
            numbers.append(number)
    finally:
        wb.close()
    split = Split(np.asarray(inputs, np.int32).reshape(-1, shape.input_dim), np.asarray(targets, np.float32))
    _check_split(split, np.asarray(numbers), shape, path)
    return split


# --------------------------------------------------------------------------- workbooks


def _shared_strings_workbook(path: Path) -> Path:
    """The split as an openpyxl/Excel-style sheet: shared strings, cell references, a third column of other
    types, a rich-text string with a phonetic run."""
    strings: dict[str, int] = {}

    def s(text: str) -> int:
        return strings.setdefault(text, len(strings))

    notes = ['<c r="C{r}" t="n"><v>3.5</v></c>', '<c r="C{r}" t="b"><v>1</v></c>', '<c r="C{r}" t="e"><v>#N/A</v></c>',
             '<c r="C{r}" t="inlineStr"><is><t>a note</t></is></c>', ""]

    def rows():
        yield xlsx.sheet_start('<dimension ref="A1:C6"/>')
        yield (f'<row r="1"><c r="A1" t="s"><v>{s(INPUT_COLUMN)}</v></c><c r="B1" t="s"><v>{s(TARGET_COLUMN)}</v></c>'
               '<c r="C1" t="str"><v>note</v></c></row>')
        for r, (x, y) in enumerate(zip(SPLIT.inputs.tolist(), SPLIT.targets.tolist()), start=2):
            yield (f'<row r="{r}" spans="1:3"><c r="A{r}" t="s"><v>{s(str(x))}</v></c><c r="B{r}" s="2" t="s">'
                   f'<v>{s(str([int(y)]))}</v></c>{notes[r - 2].format(r=r)}</row>')
        yield xlsx.SHEET_END

    xlsx.write_workbook(path, "Data", rows(), strings)
    with zipfile.ZipFile(path) as z:
        parts = {i.filename: z.read(i.filename) for i in z.infolist()}
    first = str(SPLIT.inputs[0].tolist())
    rich = (f"<si><r><t>{first[:5]}</t></r><r><rPr><b/></rPr><t xml:space=\"preserve\">{first[5:]}</t></r>"
            '<rPh sb="0" eb="1"><t>phonetic</t></rPh></si>')
    parts[STRINGS] = parts[STRINGS].replace(f"<si><t>{first}</t></si>".encode(), rich.encode())
    _write_parts(path, parts)
    return path


def _write_parts(path: Path, parts: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in parts.items():
            z.writestr(name, data)


def _parts(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {i.filename: z.read(i.filename) for i in z.infolist()}


@pytest.fixture(scope="module")
def workbooks(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("workbooks")
    ours = folder / "ours.xlsx"
    write_split(ours, SPLIT)
    styled = folder / "openpyxl.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append([INPUT_COLUMN, TARGET_COLUMN, "n", "when"])
    for x, y in zip(SPLIT.inputs.tolist(), SPLIT.targets.tolist()):
        ws.append([str(x), str([int(y)]), 1.25, True])
    wb.save(styled)
    return {"ours": ours, "shared": _shared_strings_workbook(folder / "shared.xlsx"), "openpyxl": styled}


# --------------------------------------------------------------------------- values: openpyxl's


@pytest.mark.parametrize("name", ["ours", "shared", "openpyxl"])
def test_cells_are_openpyxls(workbooks, name):
    path = workbooks[name]
    assert our_cells(path) == openpyxl_cells(path)
    split = read_split(path)
    np.testing.assert_array_equal(split.inputs, SPLIT.inputs)
    np.testing.assert_array_equal(split.targets, SPLIT.targets)


@pytest.mark.parametrize("name", ["train", "val", "test"])
def test_upstream_cells_are_openpyxls(upstream, name):
    path = upstream / "dataset" / f"mlp_{name}.xlsx"
    assert our_cells(path) == openpyxl_cells(path)


# --------------------------------------------------------------------------- hostile cells, one at a time


def _edited(source: Path, target: Path, **edits) -> Path:
    """A copy of `source` with parts replaced: edits maps a part (SHEET, STRINGS, ...) to a function of its text."""
    parts = _parts(source)
    for name, edit in edits.items():
        name = {"sheet": SHEET, "strings": STRINGS, "rels": "xl/_rels/workbook.xml.rels"}[name]
        parts[name] = edit(parts[name].decode()).encode()
    _write_parts(target, parts)
    return target


def _first(pattern: str, replacement: str):
    return lambda text: re.sub(pattern, replacement, text, count=1)


CASES = {
    # id: (base workbook, edits, fragments of the one line)
    "shared_string_index_out_of_range": ("shared", {"sheet": _first(r'(<c r="B3"[^>]*><v>)\d+', r"\g<1>99")},
                                         ["row 3, column output_list: cell B3 refers to shared string '99', but the workbook "
                                          + "has 12 (indices 0..11)"]),
    "shared_string_index_negative": ("shared", {"sheet": _first(r'(<c r="B3"[^>]*><v>)\d+', r"\g<1>-1")},
                                     ["cell B3 refers to shared string '-1'"]),
    "number_holding_text": ("shared", {"sheet": _first(r'<c r="B4" s="2" t="s"><v>\d+', '<c r="B4" t="n"><v>[8]')},
                            ["row 4, column output_list: cell B4 has type 'n' (a number) but holds '[8]'"]),
    "boolean_holding_text": ("ours", {"sheet": _first(r'<c t="inlineStr"><is><t>\[\d\]</t></is></c></row><row r="4">',
                                                      '<c t="b"><v>yes</v></c></row><row r="4">')},
                             ["row 3, column output_list: cell B3 has type 'b' (a boolean) but holds 'yes'"]),
    "date_holding_text": ("ours", {"sheet": _first(r'<c t="inlineStr"><is><t>\[\d\]</t></is></c></row>',
                                                   '<c t="d"><v>2024-13-45</v></c></row>')},
                          ["cell B2 has type 'd' (a date) but holds '2024-13-45'"]),
    "unknown_cell_type": ("ours", {"sheet": _first(r'<c t="inlineStr">', '<c t="zz">')},
                          ["row 1 (the header): cell A1 has type 'zz', expected one of n, s, inlineStr"]),
    "reference_to_row_zero": ("shared", {"sheet": _first('r="A3"', 'r="A0"')},
                              ["row 3: cell reference 'A0', expected a reference to a cell of row 3"]),
    "reference_to_another_row": ("shared", {"sheet": _first('r="B3"', 'r="B7"')}, ["row 3: cell reference 'B7'"]),
    "reference_beyond_xfd": ("shared", {"sheet": _first('r="C2"', 'r="XFE2"')}, ["cell XFE2 is beyond column XFD"]),
    "columns_out_of_order": ("shared", {"sheet": _first('r="B2"', 'r="A2"')},
                             ["row 2: cell A2 comes after column A; expected increasing columns"]),
    "row_number_not_a_number": ("ours", {"sheet": _first('<row r="3">', '<row r="3.5">')},
                                ["the row after row 2 has row number '3.5', expected 1..1048576"]),
    "row_number_zero": ("shared", {"sheet": _first('<row r="1">', '<row r="0">')},
                        ["row number 0 (after row 0) is out of range"]),
    "row_number_beyond_excel": ("ours", {"sheet": _first('<row r="6">', '<row r="1048577">')},
                                ["row number 1048577 (after row 5) is out of range, expected 1..1048576"]),
    "rows_out_of_order": ("ours", {"sheet": _first('<row r="4">', '<row r="2">')},
                          ["row 2 comes after row 3; expected increasing row numbers"]),
    "row_inside_a_cell": ("ours", {"sheet": _first("</is></c></row>", '</is><row r="9"/></c></row>')},
                          ["not a readable .xlsx workbook (xl/worksheets/sheet1.xml is damaged: a <row> inside <c>"]),
    "cell_outside_a_row": ("ours", {"sheet": _first("<sheetData>", '<sheetData><c t="inlineStr"><is><t>x</t></is></c>')},
                           ["a <c> inside <sheetData>, expected inside <row>"]),
    "chartsheet_first": ("ours", {"rels": lambda t: t.replace("relationships/worksheet", "relationships/chartsheet")},
                         ["the first sheet 'Sheet1' is a chartsheet, expected a worksheet with the columns input_list"]),
    "dialogsheet_first": ("ours", {"rels": lambda t: t.replace("relationships/worksheet", "relationships/dialogsheet")},
                          ["the first sheet 'Sheet1' is a dialogsheet"]),
    "chartsheet_part": ("ours", {"sheet": lambda t: f'<chartsheet xmlns="{xlsx.XLSX_NS}"><sheetPr/></chartsheet>'},
                        ["the first sheet 'Sheet1' (xl/worksheets/sheet1.xml) is a <chartsheet>, expected a worksheet"]),
    "sheet_part_missing": ("ours", {"rels": lambda t: t.replace("worksheets/sheet1.xml", "worksheets/gone.xml")},
                           ["not a readable .xlsx workbook (xl/worksheets/gone.xml is missing)"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_cells_are_one_line(case, workbooks, tmp_path):
    base, edits, fragments = CASES[case]
    path = _edited(workbooks[base], tmp_path / "split.xlsx", **edits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError) as e:
            read_split(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("field,value,fragment", [(8, 1, "RuntimeError: File <ZipInfo filename='xl/worksheets/sheet1.xml'"),
                                                   (10, 99, "NotImplementedError: That compression method is not supported")])
def test_an_encrypted_or_unknown_compression_member_is_one_line(workbooks, tmp_path, field, value, fragment):
    """The sheet's central-directory entry flagged encrypted (bit 0 of its flags), or compressed by method 99."""
    data = bytearray(workbooks["ours"].read_bytes())
    entry = 0  # the central directory's entry for the sheet: signature PK\1\2, its name at offset 46
    while True:
        entry = data.index(b"PK\x01\x02", entry)
        length = int.from_bytes(data[entry + 28 : entry + 30], "little")
        if data[entry + 46 : entry + 46 + length] == SHEET.encode():
            break
        entry += 4
    data[entry + field : entry + field + 2] = value.to_bytes(2, "little")
    path = tmp_path / "split.xlsx"
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"split.xlsx: not a readable .xlsx workbook \(xl/worksheets/sheet1.xml is damaged") as e:
        read_split(path)
    assert fragment in str(e.value)


def test_a_cell_outside_the_two_columns_is_not_read(workbooks, tmp_path):
    """A damaged cell in a column the split does not use is no reason to refuse it (openpyxl raised on it)."""
    path = _edited(workbooks["shared"], tmp_path / "split.xlsx",
                   sheet=_first('<c r="C2" t="n"><v>3.5', '<c r="C2" t="n"><v>not a number'))
    np.testing.assert_array_equal(read_split(path).inputs, SPLIT.inputs)
    with pytest.raises(ValueError):
        openpyxl_split(path)


def test_the_padding_sheet_is_read_in_milliseconds(workbooks, tmp_path):
    """2 KB whose last row is 1,048,576 and whose dimension spans A..XFD: openpyxl made 1,048,570 rows of 16,384
    cells to reach it (`evaluate` ran for minutes). Its rows are read, the far one included, at once."""
    path = _edited(workbooks["ours"], tmp_path / "padding.xlsx",
                   sheet=lambda t: t.replace("<sheetData>", '<dimension ref="A1:XFD1048576"/><sheetData>')
                                    .replace('<row r="6">', '<row r="1048576">'))
    assert path.stat().st_size < 4096
    start = time.monotonic()
    split = read_split(path)
    assert time.monotonic() - start < 2
    np.testing.assert_array_equal(split.inputs, SPLIT.inputs)
    np.testing.assert_array_equal(split.targets, SPLIT.targets)


def test_a_compression_bomb_is_refused_by_its_declared_size(workbooks, tmp_path, monkeypatch):
    from jax_impl.task import splits

    path = _edited(workbooks["ours"], tmp_path / "bomb.xlsx", sheet=lambda t: t.replace("<sheetData>", " " * 2_000_000 + "<sheetData>"))
    assert path.stat().st_size < 20_000
    monkeypatch.setattr(splits, "MAX_PART_BYTES", 1 << 20)
    with pytest.raises(UserError, match=r"bomb.xlsx: not a readable .xlsx workbook \(xl/worksheets/sheet1.xml holds 200\d{4} "
                                        r"bytes uncompressed, more than the 1048576 read\)"):
        read_split(path)


# --------------------------------------------------------------------------- fuzzing the cell XML

CELL_TYPES = ["n", "s", "b", "e", "str", "d", "inlineStr", "zz", "", None]
CELL_TEXTS = st.one_of(
    st.sampled_from(["[8]", "[0]", "[8, 9, 5, 1, 3, 2, 9, 4, 7, 1]", "8", "", " ", "1e3", "1.5", "-0", "NaN", "TRUE",
                     "#N/A", "2024-01-01", "[8, 9", "x005F_", "[8]" * 30, "\u0663", "1_0"]),
    st.lists(st.integers(0, 9), min_size=1, max_size=11).map(str),
    st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=12),
)


def _number(row: ET.Element, rows: list[ET.Element]) -> int:
    """The row's number as the file gives it, or its position where it gives none."""
    text = row.get("r")
    return int(text) if text and text.isdigit() else rows.index(row) + 1 if row in rows else 1


@st.composite
def mutation(draw, parts: dict[str, bytes]) -> dict[str, bytes]:
    """One to three structure-aware edits of the sheet's cell XML (and of the shared strings, where there are)."""
    root = ET.fromstring(parts[SHEET])
    data = root.find(f"{M}sheetData")
    strings = ET.fromstring(parts[STRINGS]) if STRINGS in parts else None
    n_strings = len(strings) if strings is not None else 0
    for _ in range(draw(st.integers(1, 3))):
        rows = list(data.iter(f"{M}row"))
        cells = [(row, c) for row in rows for c in row.iter(f"{M}c")]
        row, cell = cells[draw(st.integers(0, len(cells) - 1))]
        number = _number(row, list(data))
        kind = draw(st.sampled_from(["type", "ref", "row_number", "value", "shared_index", "nesting", "drop",
                                     "duplicate", "swap", "strings"]))
        event(f"mutation {kind}")
        if kind == "type":
            t = draw(st.sampled_from(CELL_TYPES))
            cell.attrib.pop("t", None) if t is None else cell.set("t", t)
        elif kind == "ref":
            ref = draw(st.sampled_from([f"{col}{number}" for col in ("A", "B", "C", "D", "XFD", "XFE", "AAA")]
                                       + [f"A{number + 1}", f"a{number}", f"$A${number}", "A0", "", "A", str(number),
                                          f"A0{number}", f"A{number} ", "1A", f"ZZZZ{number}", None]))
            cell.attrib.pop("r", None) if ref is None else cell.set("r", ref)
        elif kind == "row_number":
            r = draw(st.sampled_from([str(number), str(number - 1), str(number + 1), str(number + 7), "0", "-1",
                                      "1048576", "1048577", f"{number}.0", "x", "", f" {number}", "\u0663", None]))
            row.attrib.pop("r", None) if r is None else row.set("r", r)
        elif kind in ("value", "shared_index"):
            for child in list(cell):
                cell.remove(child)
            if kind == "shared_index":
                cell.set("t", "s")
                text = draw(st.integers(-2, n_strings + 2).map(str)
                            | st.sampled_from(["", " 1", "1.0", "+1", "1e1", "99999999999", "0x1"]))
            else:
                text = draw(CELL_TEXTS)
            if cell.get("t") == "inlineStr":
                ET.SubElement(ET.SubElement(cell, f"{M}is"), f"{M}t").text = text
            else:
                ET.SubElement(cell, f"{M}v").text = text
        elif kind == "nesting":
            how = draw(st.sampled_from(["cell_in_sheetdata", "row_in_cell", "cell_in_cell", "cell_in_is", "unknown_in_row",
                                        "v_beside_is", "two_t", "rich_runs", "phonetic", "formula", "drop_children",
                                        "row_in_worksheet", "foreign_cell", "second_sheetdata"]))
            event(f"nesting {how}")
            inline = cell.find(f"{M}is")
            if how == "cell_in_sheetdata":
                row.remove(cell) if cell in list(row) else None
                data.insert(0, cell)
            elif how == "row_in_cell":
                cell.append(copy.deepcopy(row))
            elif how == "cell_in_cell":
                cell.append(copy.deepcopy(cell))
            elif how == "cell_in_is" and inline is not None:
                inline.append(copy.deepcopy(cell))
            elif how == "unknown_in_row":
                row.insert(draw(st.integers(0, len(row))), ET.Element(f"{M}extLst"))
            elif how == "v_beside_is":
                ET.SubElement(cell, f"{M}v").text = "7"
            elif how == "two_t" and inline is not None:
                ET.SubElement(inline, f"{M}t").text = "[3]"
            elif how == "rich_runs" and inline is not None and inline.find(f"{M}t") is not None:
                text = inline.find(f"{M}t").text or ""
                inline.remove(inline.find(f"{M}t"))
                for piece in (text[:3], text[3:]):  # the same text in two runs: a harmless mutation
                    ET.SubElement(ET.SubElement(inline, f"{M}r"), f"{M}t").text = piece
            elif how == "phonetic" and inline is not None:
                ET.SubElement(ET.SubElement(inline, f"{M}rPh"), f"{M}t").text = "ignored"
            elif how == "formula":
                ET.SubElement(cell, f"{M}f").text = "SUM(A1:A2)"
            elif how == "drop_children":
                for child in list(cell):
                    cell.remove(child)
            elif how == "row_in_worksheet" and row in list(data):
                data.remove(row)
                root.append(row)
            elif how == "foreign_cell":
                row.insert(0, ET.Element("{urn:other}c", {"r": f"A{number}"}))
            elif how == "second_sheetdata":
                root.append(ET.Element(f"{M}sheetData"))
        elif kind == "drop":
            if draw(st.booleans()) and row in list(data):
                data.remove(row)
            elif cell in list(row):
                row.remove(cell)
        elif kind == "duplicate":
            if draw(st.booleans()) and row in list(data):
                data.insert(list(data).index(row), copy.deepcopy(row))
            elif cell in list(row):
                row.insert(list(row).index(cell), copy.deepcopy(cell))
        elif kind == "swap":
            siblings = list(data) if draw(st.booleans()) else list(row)
            if len(siblings) > 1:
                i, j = draw(st.integers(0, len(siblings) - 1)), draw(st.integers(0, len(siblings) - 1))
                parent = data if siblings[0] in list(data) else row
                parent[i], parent[j] = siblings[j], siblings[i]
        elif strings is not None and len(strings):
            si = strings[draw(st.integers(0, len(strings) - 1))]
            how = draw(st.sampled_from(["drop", "empty", "runs", "text"]))
            event(f"shared string {how}")
            if how == "drop":
                strings.remove(si)
            elif how == "empty":
                for child in list(si):
                    si.remove(child)
            elif how == "runs":
                text = "".join(si.itertext())
                for child in list(si):
                    si.remove(child)
                for piece in (text[:2], text[2:]):
                    ET.SubElement(ET.SubElement(si, f"{M}r"), f"{M}t").text = piece
            else:
                for child in list(si):
                    si.remove(child)
                ET.SubElement(si, f"{M}t").text = draw(CELL_TEXTS)
    ET.register_namespace("", xlsx.XLSX_NS)
    out = dict(parts)
    out[SHEET] = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    if strings is not None:
        out[STRINGS] = ET.tostring(strings, encoding="utf-8", xml_declaration=True)
    return out


def _far_rows(sheet: bytes) -> bool:
    """Whether a row number is beyond 10,000 (the openpyxl reference would pad up to it: a second each)."""
    return any(int(n) > 10_000 for n in re.findall(rb'<(?:\w+:)?row[^>]* r="(\d{1,12})"', sheet))


@settings(max_examples=1500 if LONG else 40, deadline=None)
@given(data=st.data())
def test_fuzzed_cell_xml(workbooks, tmp_path_factory, data):
    base = data.draw(st.sampled_from(["ours", "shared"]), label="base")
    parts = data.draw(mutation(_parts(workbooks[base])))
    path = tmp_path_factory.mktemp("xlsxfuzz") / "split.xlsx"
    _write_parts(path, parts)
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            split = read_split(path)
        except UserError as e:
            split = None
            assert str(e).startswith(f"{path}: ") and "\n" not in str(e), str(e)
    assert time.monotonic() - start < 5
    assert not caught, [str(w.message) for w in caught]
    if _far_rows(parts[SHEET]):
        event("openpyxl not asked (a far row)")
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = openpyxl_split(path)
    except Exception:  # noqa: BLE001 - the reference reader's tracebacks are what the new reader replaced
        reference = None
    event({(True, True): "both read it", (True, False): "read; openpyxl could not",
           (False, True): "refused; openpyxl read it", (False, False): "both refused"}[split is not None, reference is not None])
    if split is not None and reference is not None:
        np.testing.assert_array_equal(split.inputs, reference.inputs)
        np.testing.assert_array_equal(split.targets, reference.targets)
