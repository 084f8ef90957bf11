"""A minimal .xlsx writer: one sheet whose XML the caller streams as text, written atomically.

openpyxl builds a Python object per cell. This project's workbooks are regular tables (the 10,000 task
rows of the splits, the 100,000-row circuit trace), and formatting their rows as XML text is 10-30x
faster. openpyxl, pandas, Excel and LibreOffice read the result as an ordinary workbook.
"""

from __future__ import annotations

import zipfile
from collections.abc import Collection, Iterable
from pathlib import Path
from xml.sax.saxutils import escape

from jax_impl.files.atomic import atomic_path

XLSX_NS = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
REL_NS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_PKG_REL_NS = "http://schemas.openxmlformats.org/package/2006/relationships"
_CT = "application/vnd.openxmlformats-officedocument.spreadsheetml"
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'

# Cell styles (the `s` attribute of a cell): 0 plain (Excel's default), 1 bold centred header, 2 centred,
# 3 centred "0.0000".
_CENTRE = '<alignment horizontal="center" vertical="center"/>'
_FONT = '<sz val="11"/><name val="Calibri"/><family val="2"/>'
_STYLES = (
    f'{_XML_DECLARATION}<styleSheet xmlns="{XLSX_NS}">'
    '<numFmts count="1"><numFmt numFmtId="164" formatCode="0.0000"/></numFmts>'
    f'<fonts count="2"><font>{_FONT}</font><font><b/>{_FONT}</font></fonts>'
    '<fills count="2"><fill><patternFill patternType="none"/></fill><fill><patternFill patternType="gray125"/></fill>'
    '</fills><borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="4"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/>'
    f'<xf numFmtId="0" fontId="1" fillId="0" borderId="0" xfId="0" applyFont="1" applyAlignment="1">{_CENTRE}</xf>'
    f'<xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0" applyAlignment="1">{_CENTRE}</xf>'
    '<xf numFmtId="164" fontId="0" fillId="0" borderId="0" xfId="0" applyNumberFormat="1" applyAlignment="1">'
    f'{_CENTRE}</xf></cellXfs><cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
)


def sheet_start(extra: str = "") -> str:
    """The opening of a worksheet, up to `<sheetData>`; extra (dimension, views, columns) goes before it."""
    return f'{_XML_DECLARATION}<worksheet xmlns="{XLSX_NS}" xmlns:r="{REL_NS}">{extra}<sheetData>'


SHEET_END = "</sheetData></worksheet>"


def column_letter(i: int) -> str:
    """0-based column index -> Excel letters (0 -> A, 26 -> AA)."""
    letters = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        letters = chr(65 + r) + letters
    return letters


def text_cell(text: str) -> str:
    """A plain cell holding text inline (no shared-string table needed), as pandas' `to_excel` writes text."""
    return f'<c t="inlineStr"><is><t>{escape(text)}</t></is></c>'


def write_workbook(
    path: Path | str, sheet_name: str, sheet_xml: Iterable[str], shared_strings: Collection[str] = ()
) -> None:
    """Write a one-sheet workbook to path, atomically.

    sheet_xml: the worksheet XML in pieces (`sheet_start()`, rows, `SHEET_END`), streamed into the file.
    shared_strings: the table that cells with `t="s"` index into, in iteration order (a dict's keys work).
    It is read after the sheet is streamed, so the sheet's generator may fill it as it goes.
    """
    with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as f:  # open() dates it 1980-01-01
            for chunk in sheet_xml:
                f.write(chunk.encode())
        for name, text in _package_parts(sheet_name, list(shared_strings)).items():
            zf.writestr(_entry(name), text, compresslevel=1)


def _entry(name: str) -> zipfile.ZipInfo:
    """A zip entry dated 1980-01-01 (zip's epoch; writestr would date it now): the same workbook is the same
    bytes whenever and wherever it is written (there is no docProps/core.xml with a creation time either)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o600 << 16  # what ZipFile.writestr gives a name without a ZipInfo
    return info


def _package_parts(sheet_name: str, shared_strings: list[str]) -> dict[str, str]:
    """Every part of the workbook but the sheet: styles, workbook, relationships, content types, strings."""
    parts = {
        "xl/styles.xml": _STYLES,
        "xl/workbook.xml": (
            f'{_XML_DECLARATION}<workbook xmlns="{XLSX_NS}" xmlns:r="{REL_NS}"><bookViews><workbookView activeTab="0"/>'
            f'</bookViews><sheets><sheet name="{escape(sheet_name)}" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            f'{_XML_DECLARATION}<Relationships xmlns="{_PKG_REL_NS}">'
            f'<Relationship Id="rId1" Type="{REL_NS}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{REL_NS}/styles" Target="styles.xml"/>'
            + (f'<Relationship Id="rId3" Type="{REL_NS}/sharedStrings" Target="sharedStrings.xml"/>' if shared_strings else "")
            + "</Relationships>"
        ),
        "_rels/.rels": (
            f'{_XML_DECLARATION}<Relationships xmlns="{_PKG_REL_NS}">'
            f'<Relationship Id="rId1" Type="{REL_NS}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "[Content_Types].xml": (
            f'{_XML_DECLARATION}<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{_CT}.sheet.main+xml"/>'
            f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_CT}.worksheet+xml"/>'
            f'<Override PartName="/xl/styles.xml" ContentType="{_CT}.styles+xml"/>'
            + (f'<Override PartName="/xl/sharedStrings.xml" ContentType="{_CT}.sharedStrings+xml"/>' if shared_strings else "")
            + "</Types>"
        ),
    }
    if shared_strings:
        parts["xl/sharedStrings.xml"] = (
            f'{_XML_DECLARATION}<sst xmlns="{XLSX_NS}" count="{len(shared_strings)}" uniqueCount="{len(shared_strings)}">'
            + "".join(f"<si><t>{escape(s)}</t></si>" for s in shared_strings) + "</sst>"
        )
    return parts
