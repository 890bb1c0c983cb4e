"""The verdict of ``stnref reference check``: per case, as a table, JSON or JUnit XML.

:class:`CaseResult` is one case's verdict (``pass``, ``fail`` or ``skip``), the dtype and
tolerances it was judged with, and per array the counts, the worst element and where it
is; :class:`Report` holds them all with the selection that produced them.  Every string
that comes from a file is bounded before it reaches a row (docs/conventions.md §7.8).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import xml.etree.ElementTree as ET

from ._files import clip_text

ID_COLUMN = 64          # widest case-id column of the table; a longer id overflows its own row
JSON_FORMAT = "stnref-check"
JSON_FORMAT_VERSION = 1
# characters XML 1.0 cannot hold (JUnit files are XML)
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def number(x):
    """A float for JSON: finite numbers as numbers, NaN and infinities as strings."""
    x = float(x)
    return x if math.isfinite(x) else str(x)


def _index_text(name, index):
    return f"{name}[{', '.join(map(str, index))}]"


def array_notes(verdict, ctx, golden, result):
    """What failed in one array, as a kernel author acts on it: the count, the worst element
    with its grid point and pixel coordinates, and on which side each NaN is."""
    v = verdict
    if v.problem:
        return f"{v.name}: {v.problem}"
    parts = [f"{v.name}: {v.failing} of {v.elements} elements fail"]

    def where(index):
        place = ctx.describe(v.name, index)
        return _index_text(v.name, index) + (f" ({place})" if place else "")

    if v.worst is not None:
        parts.append(f"worst off by {abs(v.result_value - v.golden_value):.3e} at {where(v.worst)}: "
                     f"golden {v.golden_value:.17g}, result {v.result_value:.17g}")
    if v.nan_in_result:
        parts.append(f"the result holds NaN where golden is not at {v.nan_in_result}, first "
                     f"{where(v.first_nan_in_result)} (golden {float(golden[v.first_nan_in_result]):.17g})")
    if v.nan_in_golden:
        parts.append(f"golden holds NaN where the result is not at {v.nan_in_golden}, first "
                     f"{where(v.first_nan_in_golden)} (result {float(result[v.first_nan_in_golden]):.17g})")
    return "; ".join(parts)


def _array_json(v, where):
    out = {"name": v.name, "ok": v.ok, "elements": v.elements, "failing": v.failing,
           "max_abs": number(v.max_abs), "max_rel": number(v.max_rel),
           "problem": v.problem or None, "nan_in_result": v.nan_in_result,
           "nan_in_golden": v.nan_in_golden, "result_dtype": v.result_dtype or None, "worst": None}
    if v.worst is not None:
        out["worst"] = {"index": list(v.worst), "golden": number(v.golden_value),
                        "result": number(v.result_value),
                        "abs_error": number(abs(v.result_value - v.golden_value)),
                        "where": where(v.name, v.worst)}
    return out


@dataclasses.dataclass
class CaseResult:
    """One case's verdict.  ``notes`` are the problems found (a missing file, an unreadable
    one, per failing array what failed and where), ``explanations`` the rules that explain
    the differences, ``pins`` the convention the case pins (None for general position)."""

    id: str
    op: str
    family: str
    verdict: str                       # "pass", "fail" or "skip"
    dtype: str                         # the dtype whose answers and tolerances judged the case
    tolerance: dict                    # output name -> {"atol", "rtol"}, for the judged outputs
    notes: list = dataclasses.field(default_factory=list)
    explanations: list = dataclasses.field(default_factory=list)
    pins: str | None = None
    arrays: list = dataclasses.field(default_factory=list)   # ArrayVerdicts
    where: object = None                                     # (name, index) -> text or None

    @property
    def max_abs(self):
        return max([v.max_abs for v in self.arrays], default=0.0)

    @property
    def max_rel(self):
        return max([v.max_rel for v in self.arrays], default=0.0)

    @property
    def failing(self):
        return sum(v.failing for v in self.arrays)

    @property
    def elements(self):
        return sum(v.elements for v in self.arrays)

    def reason(self):
        """The notes and explanations as one line (empty for a pass)."""
        text = "; ".join(self.notes)
        if self.explanations:
            text += " | explained by: " + "; ".join(self.explanations)
        return text

    def row_notes(self):
        if self.verdict != "fail":
            return self.reason()
        pins = f"pins: {clip_text(self.pins)}" if self.pins else "general position"
        return f"{self.reason()} | {pins}"

    def to_json(self):
        where = self.where or (lambda name, index: None)
        return {"id": self.id, "op": self.op, "family": self.family, "verdict": self.verdict,
                "dtype": self.dtype, "tolerance": self.tolerance,
                "max_abs": number(self.max_abs), "max_rel": number(self.max_rel),
                "failing": self.failing, "elements": self.elements, "reason": self.reason(),
                "explanations": list(self.explanations),
                "pins": clip_text(self.pins) if self.pins else None,
                "arrays": [_array_json(v, where) for v in self.arrays]}


@dataclasses.dataclass
class Report:
    """Every selected case's verdict, and the selection that produced them; what
    :func:`stnref.reference.run_check` returns.

    Attributes
    ----------
    golden, results : str
        The directories compared.
    version : int
        The golden set's reference version.
    total : int
        The cases in the manifest, selected or not.
    cases : list of CaseResult
        The selected cases' verdicts, in manifest order.
    only, exclude, outputs, dtype
        The selection (``run_check``'s arguments).
    """

    golden: str
    results: str
    version: object
    total: int                          # cases in the manifest
    cases: list                         # CaseResults of the selected cases, in manifest order
    only: tuple = ()
    exclude: tuple = ()
    outputs: tuple | None = None
    dtype: str | None = None

    def count(self, verdict):
        return sum(c.verdict == verdict for c in self.cases)

    @property
    def ok(self):
        """True only if no selected case fails and at least one was judged."""
        return self.count("fail") == 0 and self.count("pass") > 0

    def summary(self):
        judged = self.count("pass") + self.count("fail")
        text = f"{self.count('pass')}/{judged} cases passed"
        if self.count("skip"):
            text += f", {self.count('skip')} skipped (none of --outputs {','.join(self.outputs)})"
        if len(self.cases) < self.total:
            text += f", {self.total - len(self.cases)} of {self.total} not selected"
        judged_as = f"; judged with {self.dtype} answers and tolerances" if self.dtype else ""
        return f"{text} (reference version {self.version}{judged_as})"

    def table(self):
        """The text table: one row per selected case, then the summary line."""
        width = min(max([len(c.id) for c in self.cases] + [len("case")]), ID_COLUMN)
        lines = [f"{'case':<{width}}  result  dtype    {'max abs':>10}  {'max rel':>10}  notes"]
        for c in self.cases:
            numbers = (f"{c.max_abs:10.3e}  {c.max_rel:10.3e}" if c.verdict != "skip"
                       else f"{'-':>10}  {'-':>10}")
            lines.append(f"{c.id:<{width}}  {c.verdict.upper():<6}  {c.dtype:<7}  {numbers}  "
                         f"{c.row_notes()}".rstrip())
        lines.append(self.summary())
        return "\n".join(lines)

    def to_json(self):
        """The report as a JSON-ready dict (NaN and infinities as strings)."""
        return {"format": JSON_FORMAT, "format_version": JSON_FORMAT_VERSION,
                "golden": self.golden, "results": self.results,
                "reference_version": self.version, "ok": self.ok,
                "selection": {"only": list(self.only), "exclude": list(self.exclude),
                              "outputs": list(self.outputs) if self.outputs else None,
                              "dtype": self.dtype},
                "summary": {"cases": self.total, "selected": len(self.cases),
                            "passed": self.count("pass"), "failed": self.count("fail"),
                            "skipped": self.count("skip")},
                "cases": [c.to_json() for c in self.cases]}

    def json_bytes(self):
        return (json.dumps(self.to_json(), indent=1, sort_keys=True, allow_nan=False) + "\n").encode()

    def junit_bytes(self):
        """The report as JUnit XML: one ``testcase`` per selected case, a ``failure`` or
        ``skipped`` child with the reason, the numbers in ``system-out``."""
        def clean(text):
            return _NOT_XML.sub("\ufffd", str(text))

        attrs = {"name": "stnref reference check", "tests": str(len(self.cases)),
                 "failures": str(self.count("fail")), "skipped": str(self.count("skip")),
                 "errors": "0"}
        suites = ET.Element("testsuites", attrs)
        suite = ET.SubElement(suites, "testsuite", attrs)
        props = ET.SubElement(suite, "properties")
        for key, value in (("golden", self.golden), ("results", self.results),
                           ("reference_version", self.version), ("summary", self.summary())):
            ET.SubElement(props, "property", {"name": key, "value": clean(value)})
        for c in self.cases:
            case = ET.SubElement(suite, "testcase", {"classname": f"stnref.reference.{c.op}",
                                                     "name": c.id})
            if c.verdict == "fail":
                child = ET.SubElement(case, "failure", {"message": clean(clip_text(c.reason(), 500)),
                                                        "type": clean(c.family)})
                child.text = clean(c.row_notes())
            elif c.verdict == "skip":
                ET.SubElement(case, "skipped", {"message": clean(c.reason())})
            tol = ", ".join(f"{n} atol {t['atol']:.3g} rtol {t['rtol']:.3g}" for n, t in c.tolerance.items())
            ET.SubElement(case, "system-out").text = clean(
                f"{c.verdict}; {c.failing} of {c.elements} elements fail; max abs {c.max_abs:.3e}, "
                f"max rel {c.max_rel:.3e}; judged in {c.dtype} ({tol})")
        return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"
