"""The rule layer: :class:`RegionFindings` → :class:`Report` (DESIGN.md §2, issue 3).

The rules are data (``templates/rules.toml``, documented there) so that a radiologist can edit
them; this module only loads, validates and applies them. In order: threshold, anatomical
plausibility, precedence of the specific region over its parent, the bilateral merge, certainty
words by probability band, the impression by clinical weight, the normal statement.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigurationError
from .report import RegionCall, RegionFindings, Report, RuleInfo, Section, Statement
from .resources import templates_dir
from .tomlfile import read_toml
from .vocab import FINDINGS, REGIONS, Finding, Laterality, Region, finding, region

__all__ = [
    "DEFAULT_RULES",
    "CertaintyBand",
    "FindingRule",
    "RuleSet",
    "SectionRule",
    "apply_rules",
    "load_rules",
    "load_thresholds",
]

#: The shipped rules file, in ``templates/``.
DEFAULT_RULES = "rules.toml"

_SIDES = {Laterality.RIGHT: "right", Laterality.LEFT: "left"}


def _part(r: Region) -> str:
    """A region's name without its side ("right lower lung zone" → "lower lung zone")."""
    side = _SIDES.get(r.laterality)
    return r.name[len(side) + 1 :] if side else r.name


_PARTS: dict[str, tuple[Region, ...]] = {}
for _r in REGIONS:
    _PARTS.setdefault(_part(_r), ())
    _PARTS[_part(_r)] += (_r,)


@dataclass(frozen=True)
class CertaintyBand:
    """Probabilities from ``start`` up (to the next band) are said with ``word``."""

    start: float
    word: str


@dataclass(frozen=True)
class SectionRule:
    key: str
    title: str
    normal: str


@dataclass(frozen=True)
class FindingRule:
    """How one finding is reported: where it may be, in which section, in which words."""

    finding: Finding
    section: str
    weight: int
    singular: str
    plural: str
    regions: frozenset[Region]
    sided: bool = False
    located: bool = True
    name_site: bool = True


@dataclass(frozen=True)
class RuleSet:
    """A validated rules file; build it with :func:`load_rules` or :meth:`from_mapping`."""

    info: RuleInfo
    normal_statement: str
    certainty: tuple[CertaintyBand, ...]
    thresholds: tuple[float | None, ...]
    parents: tuple[tuple[Region, frozenset[Region]], ...]
    whole_parent_min_children: int
    plurals: tuple[tuple[str, str], ...]
    min_probability: tuple[float, ...]
    sections: tuple[SectionRule, ...]
    findings: tuple[FindingRule, ...]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], sha256: str = "", origin: str = "rules"):
        """Validate a parsed rules document; raise :class:`ConfigurationError` naming the key."""
        return _Parser(origin).ruleset(data, sha256)

    def plural(self, part: str) -> str:
        return dict(self.plurals).get(part, part + "s")

    def word(self, probability: float) -> str:
        word = self.certainty[0].word
        for band in self.certainty:
            if probability >= band.start:
                word = band.word
        return word


def load_rules(path: str | os.PathLike[str] | None = None) -> RuleSet:
    """Read a rules TOML file (the shipped ``templates/rules.toml`` by default)."""
    path = Path(path) if path is not None else templates_dir() / DEFAULT_RULES
    data, raw = read_toml(path, "rules file")
    return RuleSet.from_mapping(data, hashlib.sha256(raw).hexdigest(), str(path))


def load_thresholds(path: str | os.PathLike[str]) -> dict[Finding, float]:
    """Read a thresholds file: JSON or TOML mapping finding names (or L1..L9) to [0, 1]."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read thresholds file: {exc.strerror}") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, TOMLDecodeError
        raise ConfigurationError(f"{path}: not a valid thresholds file: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("thresholds"), dict):
        data = data["thresholds"]  # a rules-like document with a [thresholds] table
    if not isinstance(data, dict):
        raise ConfigurationError(f"{path}: expected a mapping of finding name to threshold")
    parser = _Parser(str(path))
    return {
        parser.finding(key, "thresholds"): parser.probability(v, key) for key, v in data.items()
    }


class _Parser:
    """Turns a parsed TOML document into a :class:`RuleSet`, naming the bad key on error."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, message: str) -> ConfigurationError:
        return ConfigurationError(f"{self.origin}: {message}")

    def get(
        self,
        table: Mapping[str, Any],
        key: str,
        kind: type | tuple[type, ...],
        where: str,
        default: Any = ...,
    ) -> Any:
        if key not in table:
            if default is ...:
                raise self.fail(f"{where}: missing key {key!r}")
            return default
        value = table[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float)):
            raise self.fail(
                f"{where}.{key}: expected {getattr(kind, '__name__', kind)}, got {value!r}"
            )
        return value

    def probability(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise self.fail(f"{where}: expected a probability in [0, 1], got {value!r}")
        return float(value)

    def finding(self, key: str, where: str) -> Finding:
        try:
            return finding(key)
        except ValueError as exc:
            raise self.fail(f"{where}: {exc}") from None

    def regions(self, names: Iterable[Any], where: str) -> frozenset[Region]:
        out: set[Region] = set()
        for name in names:
            if not isinstance(name, str):
                raise self.fail(f"{where}: region names must be strings, got {name!r}")
            if name in _PARTS:
                out.update(_PARTS[name])
                continue
            try:
                out.add(region(name))
            except ValueError:
                raise self.fail(f"{where}: unknown region {name!r}") from None
        return frozenset(out)

    def ruleset(self, data: Mapping[str, Any], sha256: str) -> RuleSet:
        known = {
            "name",
            "version",
            "normal_statement",
            "certainty",
            "thresholds",
            "hierarchy",
            "plurals",
            "regions",
            "sections",
            "findings",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise self.fail(f"unknown top-level keys {unknown}")
        info = RuleInfo(
            name=self.get(data, "name", str, "rules"),
            version=str(self.get(data, "version", (str, int), "rules")),
            sha256=sha256,
        )
        sections = tuple(
            SectionRule(
                key,
                self.get(t, "title", str, f"sections.{key}"),
                self.get(t, "normal", str, f"sections.{key}"),
            )
            for key, t in self.get(data, "sections", dict, "rules").items()
        )
        return RuleSet(
            info=info,
            normal_statement=self.get(data, "normal_statement", str, "rules"),
            certainty=self.certainty(self.get(data, "certainty", list, "rules")),
            thresholds=self.thresholds(self.get(data, "thresholds", dict, "rules", {})),
            parents=self.parents(self.get(data, "hierarchy", dict, "rules", {})),
            whole_parent_min_children=self.get(
                self.get(data, "hierarchy", dict, "rules", {}),
                "whole_parent_min_children",
                int,
                "hierarchy",
                1,
            ),
            plurals=self.plurals(self.get(data, "plurals", dict, "rules", {})),
            min_probability=self.min_probability(self.get(data, "regions", dict, "rules", {})),
            sections=sections,
            findings=self.findings(
                self.get(data, "findings", dict, "rules"), {s.key for s in sections}
            ),
        )

    def certainty(self, bands: list[Any]) -> tuple[CertaintyBand, ...]:
        out = []
        for i, band in enumerate(bands):
            where = f"certainty[{i}]"
            if not isinstance(band, dict):
                raise self.fail(f"{where}: expected a table with 'from' and 'word'")
            out.append(
                CertaintyBand(
                    self.probability(band.get("from"), f"{where}.from"),
                    self.get(band, "word", str, where),
                )
            )
        if not out or [b.start for b in out] != sorted({b.start for b in out}):
            raise self.fail("certainty: needs at least one band, 'from' strictly increasing")
        return tuple(out)

    def thresholds(self, table: Mapping[str, Any]) -> tuple[float | None, ...]:
        values: list[float | None] = [None] * len(FINDINGS)
        for key, value in table.items():
            values[self.finding(key, "thresholds").index] = self.probability(
                value, f"thresholds.{key}"
            )
        return tuple(values)

    def parents(self, hierarchy: Mapping[str, Any]) -> tuple[tuple[Region, frozenset[Region]], ...]:
        out = []
        for parent_name, children in self.get(hierarchy, "parents", dict, "hierarchy", {}).items():
            where = f"hierarchy.parents.{parent_name}"
            if not isinstance(children, list):
                raise self.fail(f"{where}: expected a list of region names")
            for parent in sorted(self.regions([parent_name], where), key=lambda r: r.index):
                kids = frozenset(
                    r
                    for r in self.regions(children, where)
                    if r.laterality is parent.laterality and r != parent
                )
                out.append((parent, kids))
        return tuple(out)

    def plurals(self, table: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
        for part, word in table.items():
            if part not in _PARTS or not isinstance(word, str):
                raise self.fail(f"plurals.{part}: expected a region part name and a string")
        return tuple(table.items())

    def min_probability(self, table: Mapping[str, Any]) -> tuple[float, ...]:
        values = [0.0] * len(REGIONS)
        for name, rule in table.items():
            where = f"regions.{name}"
            if not isinstance(rule, dict) or set(rule) - {"min_probability"}:
                raise self.fail(f"{where}: expected a table with min_probability only")
            value = self.probability(rule.get("min_probability", 0.0), f"{where}.min_probability")
            for r in self.regions([name], where):
                values[r.index] = value
        return tuple(values)

    def findings(self, table: Mapping[str, Any], sections: set[str]) -> tuple[FindingRule, ...]:
        rules: dict[Finding, FindingRule] = {}
        allowed = {
            "section",
            "weight",
            "singular",
            "plural",
            "regions",
            "sided",
            "located",
            "name_site",
        }
        for key, t in table.items():
            where = f"findings.{key}"
            f = self.finding(key, "findings")
            if not isinstance(t, dict) or set(t) - allowed:
                raise self.fail(f"{where}: unknown keys {sorted(set(t) - allowed)}")
            section = self.get(t, "section", str, where)
            if section not in sections:
                raise self.fail(f"{where}.section: {section!r} is not one of {sorted(sections)}")
            rules[f] = FindingRule(
                finding=f,
                section=section,
                weight=self.get(t, "weight", int, where),
                singular=self.get(t, "singular", str, where),
                plural=self.get(t, "plural", str, where),
                regions=self.regions(self.get(t, "regions", list, where), f"{where}.regions"),
                sided=self.get(t, "sided", bool, where, False),
                located=self.get(t, "located", bool, where, True),
                name_site=self.get(t, "name_site", bool, where, True),
            )
        missing = [f.name for f in FINDINGS if f not in rules]
        if missing:
            raise self.fail(f"findings: no rule for {missing}")
        return tuple(rules[f] for f in FINDINGS)


def apply_rules(
    findings: RegionFindings,
    rules: RuleSet | None = None,
    thresholds: Mapping[Finding | str, float] | None = None,
) -> Report:
    """Make the report statements of one image.

    Thresholds: the model's (``findings.thresholds``), replaced by the rules file's
    ``[thresholds]``, replaced by ``thresholds`` (the user's); the last given wins.
    """
    rules = rules or load_rules()
    effective = list(findings.thresholds)
    for i, value in enumerate(rules.thresholds):
        if value is not None:
            effective[i] = value
    for key, value in (thresholds or {}).items():
        effective[finding(key).index] = value
    calls = tuple(
        _call(findings, rules, r, f, effective[f.index]) for r in REGIONS for f in FINDINGS
    )
    present = [c for c in calls if c.present]
    statements = [
        s
        for rule in rules.findings
        for s in _statements(rule, [c for c in present if c.finding is rule.finding], rules)
    ]
    by_weight = sorted(statements, key=lambda s: (-s.weight, -s.probability))
    sections = tuple(
        Section(sr.key, sr.title, tuple(s for s in by_weight if s.section == sr.key), sr.normal)
        for sr in rules.sections
    )
    impression = tuple(s.text for s in by_weight) or (rules.normal_statement,)
    return Report(findings, calls, sections, impression, rules.info)


def _call(
    findings: RegionFindings, rules: RuleSet, r: Region, f: Finding, threshold: float
) -> RegionCall:
    result = findings.regions[r.index]
    p = result.probabilities[f.index]
    reason = ""
    if not result.found:
        reason = "region not found"
    elif p < threshold:
        reason = "below threshold"
    elif r not in rules.findings[f.index].regions or p < rules.min_probability[r.index]:
        reason = "not plausible in this region"
    return RegionCall(r, f, p, threshold, not reason, reason)


def _statements(rule: FindingRule, present: list[RegionCall], rules: RuleSet) -> list[Statement]:
    if not present:
        return []
    probability = {c.region: c.probability for c in present}
    if not rule.located:
        return [_statement(rule, "", (), max(probability.values()), rule.singular, rules)]
    named = set(probability)
    for parent, children in rules.parents:
        if parent in named:
            kids = children & named
            named -= {parent} if kids and len(kids) < rules.whole_parent_min_children else kids
    sides: dict[str, set[Laterality]] = {}
    for r in named:
        sides.setdefault(_part(r), set()).add(r.laterality)
    groups: dict[str, list[Region]] = {"bilateral": [], "right": [], "left": [], "": []}
    for r in sorted(named, key=lambda r: r.index):
        side = sides[_part(r)]
        key = "bilateral" if len(side) == 2 else _SIDES.get(r.laterality, "")
        groups[key].append(r)
    out = []
    for laterality, regions in groups.items():
        if regions:
            text = _sentence(rule, laterality, regions, rules)
            p = min(probability[r] for r in regions)  # as sure as its least sure part
            out.append(_statement(rule, laterality, tuple(regions), p, text, rules))
    return out


def _sentence(rule: FindingRule, laterality: str, regions: list[Region], rules: RuleSet) -> str:
    parts = list(dict.fromkeys(_part(r) for r in regions))
    if laterality == "bilateral":
        if parts == ["lung"]:
            return f"bilateral {rule.plural}"
        return f"bilateral {rule.plural} in the {_join(rules.plural(p) for p in parts)}"
    if laterality:
        if parts == ["lung"]:
            return (
                f"{laterality} {rule.singular}"
                if rule.sided
                else (f"{rule.singular} in the {laterality} lung")
            )
        return f"{rule.singular} in the {_join(f'{laterality} {p}' for p in parts)}"
    if not rule.name_site:
        return rule.singular
    return f"{rule.singular} in the {_join(r.name for r in regions)}"


def _statement(
    rule: FindingRule,
    laterality: str,
    regions: tuple[Region, ...],
    p: float,
    phrase: str,
    rules: RuleSet,
) -> Statement:
    word = rules.word(p)
    text = f"{word} {phrase}" if word else phrase
    return Statement(
        finding=rule.finding,
        laterality=laterality,
        regions=regions,
        probability=p,
        certainty=word,
        section=rule.section,
        weight=rule.weight,
        text=text[0].upper() + text[1:] + ".",
    )


def _join(items: Iterable[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
