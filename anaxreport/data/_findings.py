"""What is wrong with a phantom patient, how it looks, and what the report says about it.

A :class:`FindingPlan` is drawn first (it fixes the cardiothoracic ratio, so it must exist
before the anatomy); :func:`plant` then edits the attenuation layers and returns the report
statements, each naming the regions it is about and its ``category|yes/no|label`` attributes.
Regions come from where the planted opacity actually lies, so labels follow the image.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from anaxreport.data._anatomy import (
    LUNG_TISSUE,
    MU_SOFT,
    Anatomy,
    Canvas,
    Layers,
    Masks,
    diaphragm,
    lateral_border,
    medial_border,
)
from anaxreport.data._vessels import blur, draw_tubes, smooth_noise
from anaxreport.vocab import FINDINGS, REGIONS, Finding, finding, region

__all__ = ["FindingPlan", "Lesion", "Statement", "plan_for", "plant", "sample_plan"]

# Region and finding indices, looked up (and so validated) through the vocabulary.
_R = {key: region(key).index for key in ("RL", "LL", "RHS", "LHS", "CS", "Med")}
_SIDE_START = {-1: region("RL").index, 1: region("LL").index}  # lung, AZ, ULZ, MLZ, LLZ, HS, CA
_F = {f.abbreviation: f for f in FINDINGS}
OPACITY, EFFUSION, ATELECTASIS, CARDIOMEGALY = _F["L1"], _F["L2"], _F["L3"], _F["L4"]
EDEMA, PNEUMOTHORAX, CONSOLIDATION, HEART_FAILURE, PNEUMONIA = (
    _F["L5"],
    _F["L6"],
    _F["L7"],
    _F["L8"],
    _F["L9"],
)
_SIDE_WORD = {-1: "right", 1: "left"}
_SEVERITY = ("Small", "Moderate", "Large")


@dataclass(frozen=True)
class Lesion:
    """A focal parenchymal abnormality in one zone (``zone`` 0 upper, 1 mid, 2 lower)."""

    kind: str  # "consolidation", "patchy", "nodule", "plate", "basilar"
    side: int
    zone: int
    severity: float
    pneumonia: bool = False


@dataclass(frozen=True)
class FindingPlan:
    """The findings of one study, before rendering."""

    ctr: float
    effusion: tuple[float, float] = (0.0, 0.0)  # right, left severity in 0..1
    pneumothorax: tuple[float, float] = (0.0, 0.0)
    edema: float = 0.0
    lesions: tuple[Lesion, ...] = ()

    @property
    def normal(self) -> bool:
        return (
            self.ctr <= 0.5
            and not any(self.effusion)
            and not any(self.pneumothorax)
            and self.edema == 0.0
            and not self.lesions
        )


@dataclass(frozen=True)
class Statement:
    """One report sentence and, per region it mentions, its attribute strings."""

    text: str
    regions: tuple[int, ...]
    attributes: tuple[str, ...] = field(default_factory=tuple)


def _normal_ctr(rng: np.random.Generator, view: str) -> float:
    return float(rng.uniform(0.42, 0.49) if view == "AP" else rng.uniform(0.38, 0.48))


def _enlarged_ctr(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.53, 0.66))


def _side(rng: np.random.Generator) -> int:
    return -1 if rng.random() < 0.55 else 1


def _sides_effusion(rng: np.random.Generator, severity: float) -> tuple[float, float]:
    u = rng.random()
    if u < 0.45:
        return (severity, 0.0)
    if u < 0.75:
        return (0.0, severity)
    return (severity, float(np.clip(severity * rng.uniform(0.6, 1.2), 0.1, 1.0)))


def _scenario(name: str, plan: FindingPlan, rng: np.random.Generator) -> FindingPlan:
    """Add one clinical picture to ``plan``; co-occurrences follow common presentations."""
    sev = float(rng.uniform(0.15, 1.0))
    if name == "chf":
        ctr = _enlarged_ctr(rng) if rng.random() < 0.85 else plan.ctr
        eff = _sides_effusion(rng, sev * 0.7) if rng.random() < 0.6 else plan.effusion
        return replace(plan, ctr=max(plan.ctr, ctr), edema=sev, effusion=_max2(plan.effusion, eff))
    if name == "pneumonia":
        kind = "consolidation" if rng.random() < 0.65 else "patchy"
        zone = int(rng.choice(3, p=[0.15, 0.25, 0.6]))
        lesions = [Lesion(kind, _side(rng), zone, sev, pneumonia=True)]
        if rng.random() < 0.2:
            lesions.append(Lesion(kind, -lesions[0].side, 2, sev * 0.8, pneumonia=True))
        eff = plan.effusion
        if rng.random() < 0.15:
            eff = _max2(eff, (0.2, 0.0) if lesions[0].side < 0 else (0.0, 0.2))
        return replace(plan, lesions=plan.lesions + tuple(lesions), effusion=eff)
    if name == "effusion":
        plan = replace(plan, effusion=_max2(plan.effusion, _sides_effusion(rng, sev)))
        if rng.random() < 0.4:
            side = -1 if plan.effusion[0] >= plan.effusion[1] else 1
            plan = replace(plan, lesions=(*plan.lesions, Lesion("basilar", side, 2, sev)))
        return plan
    if name == "atelectasis":
        kind = "plate" if rng.random() < 0.5 else "basilar"
        lesions = [Lesion(kind, _side(rng), 2 if rng.random() < 0.8 else 1, sev)]
        if rng.random() < 0.3:
            lesions.append(Lesion(kind, -lesions[0].side, lesions[0].zone, sev))
        return replace(plan, lesions=plan.lesions + tuple(lesions))
    if name == "pneumothorax":
        ptx = (sev, 0.0) if rng.random() < 0.5 else (0.0, sev)
        return replace(plan, pneumothorax=ptx)
    if name == "cardiomegaly":
        return replace(plan, ctr=_enlarged_ctr(rng))
    kind = "nodule" if rng.random() < 0.5 else "patchy"
    lesion = Lesion(kind, _side(rng), int(rng.integers(0, 3)), sev)
    return replace(plan, lesions=(*plan.lesions, lesion))


def _max2(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    return (max(a[0], b[0]), max(a[1], b[1]))


_SCENARIOS = (
    "chf",
    "pneumonia",
    "effusion",
    "atelectasis",
    "pneumothorax",
    "cardiomegaly",
    "opacity",
)
_WEIGHTS = np.array([0.2, 0.2, 0.16, 0.14, 0.08, 0.11, 0.11])


def sample_plan(rng: np.random.Generator, view: str) -> FindingPlan:
    """Draw a study: about 40% normal, otherwise one or two clinical pictures."""
    plan = FindingPlan(ctr=_normal_ctr(rng, view))
    if rng.random() < 0.40:
        return plan
    first = int(rng.choice(len(_SCENARIOS), p=_WEIGHTS / _WEIGHTS.sum()))
    plan = _scenario(_SCENARIOS[first], plan, rng)
    if rng.random() < 0.25:
        second = int(rng.choice(len(_SCENARIOS), p=_WEIGHTS / _WEIGHTS.sum()))
        if second != first:
            plan = _scenario(_SCENARIOS[second], plan, rng)
    return plan


def plan_for(
    names: Iterable[str | Finding], rng: np.random.Generator, view: str, side: str | None = None
) -> FindingPlan:
    """A plan that contains at least the named findings (``side`` right/left/bilateral)."""
    wanted = {finding(n).index for n in names}
    sides = {"right": (-1,), "left": (1,), "bilateral": (-1, 1), None: (_side(rng),)}[side]
    plan = FindingPlan(ctr=_normal_ctr(rng, view))
    sev = float(rng.uniform(0.4, 0.9))

    def both(value: float) -> tuple[float, float]:
        return (value if -1 in sides else 0.0, value if 1 in sides else 0.0)

    if {CARDIOMEGALY.index, HEART_FAILURE.index} & wanted:
        plan = replace(plan, ctr=_enlarged_ctr(rng))
    if {EDEMA.index, HEART_FAILURE.index} & wanted:
        plan = replace(plan, edema=sev)
    if EFFUSION.index in wanted:
        plan = replace(plan, effusion=both(sev))
    if PNEUMOTHORAX.index in wanted:
        plan = replace(plan, pneumothorax=both(sev))
    lesions: list[Lesion] = []
    for s in sides:
        if PNEUMONIA.index in wanted or CONSOLIDATION.index in wanted:
            kind = "consolidation" if CONSOLIDATION.index in wanted else "patchy"
            lesions.append(Lesion(kind, s, 2, sev, pneumonia=PNEUMONIA.index in wanted))
        if ATELECTASIS.index in wanted:
            lesions.append(Lesion("plate", s, 2, sev))
        if OPACITY.index in wanted and not lesions and plan.edema == 0.0:
            lesions.append(Lesion("nodule", s, 1, sev))
    return replace(plan, lesions=tuple(lesions))


def _word(severity: float, small: str = "Small") -> str:
    words = {"Small": _SEVERITY, "Mild": ("Mild", "Moderate", "Severe")}[small]
    return words[0] if severity < 0.4 else words[1] if severity < 0.7 else words[2]


def _yes(f: Finding) -> str:
    return f.attribute


def _no(f: Finding) -> str:
    return f"{f.category.value}|no|{f.name}"


def _side_regions(side: int, parts: Iterable[int]) -> tuple[int, ...]:
    """Region indices of one side: part 0 lung, 1 apical, 2-4 zones, 5 hilum, 6 CP angle."""
    return tuple(_SIDE_START[side] + p for p in parts)


def _touched(rho: np.ndarray, zones: list[np.ndarray], side: int, share: float = 0.12) -> list[int]:
    """The lung (always) and each zone of ``side`` holding at least ``share`` of the opacity."""
    total = float(rho.sum())
    out = [_SIDE_START[side]]
    if total <= 0:
        return out
    for part in (1, 2, 3, 4, 6):
        idx = _SIDE_START[side] + part
        if float(rho[zones[idx]].sum()) >= share * total:
            out.append(idx)
    return out


def _replace_air(layers: Layers, rho: np.ndarray, density: float) -> None:
    """Fill a fraction of the aerated lung with fluid or tissue; markings vanish inside."""
    layers.soft += MU_SOFT * (1.0 - LUNG_TISSUE) * density * layers.lung_air * rho
    keep = 1.0 - np.clip(rho * 1.2, 0.0, 1.0)
    layers.vessels *= keep
    layers.texture *= keep


def _effusion(a: Anatomy, c: Canvas, m: Masks, layers: Layers, side: int, sev: float) -> np.ndarray:
    """Dependent fluid: blunts the angle, meniscus rising along the lateral wall."""
    h = a.height_r if side < 0 else a.height_l
    y, x = c.y, c.x
    lat, med = lateral_border(a, y, side)[:, None], medial_border(a, y, side)[:, None]
    w = np.clip((side * x[None, :] - med) / np.maximum(lat - med, 1.0), 0.0, 1.0)
    level = h - (0.08 + 0.5 * sev) * h
    surface = level + (0.05 + 0.1 * sev) * h * (1.0 - w) ** 1.5
    ramp = (0.04 + 0.06 * sev) * h
    rho = np.clip((y[:, None] - surface) / ramp, 0.0, 1.0) ** 0.8 * m.lung(side)
    _replace_air(layers, rho, 0.9)
    return rho


def _pneumothorax(
    a: Anatomy, c: Canvas, m: Masks, layers: Layers, side: int, sev: float
) -> np.ndarray:
    """Air between the chest wall and a retracted lung, with a thin visceral pleural line."""
    h = a.height_r if side < 0 else a.height_l
    f = 1.0 - (0.07 + 0.22 * sev)
    cy = 0.95 * h
    cx = side * float(medial_border(a, np.array([0.8 * h], np.float32), side, cap=False)[0])
    ys = cy + (c.y - cy) / f
    xs = cx + (c.x - cx) / f
    lat, med = lateral_border(a, ys, side)[:, None], medial_border(a, ys, side)[:, None]
    inside = (side * xs[None, :] <= lat) & (side * xs[None, :] >= med) & (ys[:, None] >= 0)
    inside &= ys[:, None] <= diaphragm(a, xs)[None, :]
    lung = m.lung(side)
    collapsed = inside & lung
    gap = lung & ~collapsed
    layers.soft -= MU_SOFT * LUNG_TISSUE * layers.lung_air * gap
    layers.soft += MU_SOFT * 0.25 * (1.0 - f) * layers.lung_air * collapsed
    layers.vessels *= ~gap
    layers.texture *= ~gap
    near = np.zeros_like(gap)
    near[1:, :] |= gap[:-1, :]
    near[:-1, :] |= gap[1:, :]
    near[:, 1:] |= gap[:, :-1]
    near[:, :-1] |= gap[:, 1:]
    line = (collapsed & near).astype(np.float32)
    layers.soft += MU_SOFT * 5.0 * blur(line, max(0.5 / c.step, 0.5)) * 1.5
    return gap.astype(np.float32)


def _edema(
    a: Anatomy, c: Canvas, m: Masks, layers: Layers, sev: float, rng: np.random.Generator
) -> np.ndarray:
    """Bilateral perihilar (batwing) haze, indistinct vessels, basal septal lines."""
    x, y = c.x[None, :], c.y[:, None]
    lungs = (m.lung_r | m.lung_l).astype(np.float32)
    rho = np.zeros_like(lungs)
    for hx, hy in m.hila:
        d2 = ((x - hx) / (0.55 * a.width)) ** 2 + ((y - hy - 10.0) / (0.42 * a.height_r)) ** 2
        rho = np.maximum(rho, np.exp(-1.6 * d2))
    rho += 0.3 * np.clip((y - 0.5 * a.height_r) / (0.5 * a.height_r), 0.0, 1.0)
    rho *= 1.0 + 0.25 * smooth_noise(rho.shape, 8.0 / c.step, rng)
    rho = np.clip(rho, 0.0, 1.0) * lungs * sev
    layers.soft += MU_SOFT * (1.0 - LUNG_TISSUE) * 0.5 * layers.lung_air * rho
    layers.vessels = (1.0 - 0.6 * sev) * layers.vessels + 0.6 * sev * blur(
        layers.vessels, 2.0 / c.step
    )
    if sev > 0.45:  # Kerley B lines at the lateral bases
        lines = np.zeros_like(lungs)
        segs = []
        for side in (-1, 1):
            h = a.height_r if side < 0 else a.height_l
            for _ in range(int(4 + 6 * sev)):
                yy = h * rng.uniform(0.68, 0.9)
                lat = float(lateral_border(a, np.array([yy], np.float32), side)[0])
                x0 = side * (lat - rng.uniform(0.0, 3.0))
                segs.append((x0, yy, x0 - side * rng.uniform(10.0, 20.0), yy, 0.6, 0.6))
        draw_tubes(lines, c, np.array(segs, np.float32))
        layers.soft += MU_SOFT * 2.0 * lines * lungs
    return rho


def _blob(a: Anatomy, c: Canvas, m: Masks, lesion: Lesion, rng: np.random.Generator) -> np.ndarray:
    """The density field (0..1) of a focal opacity in one zone."""
    side, h = lesion.side, (a.height_r if lesion.side < 0 else a.height_l)
    y0 = (lesion.zone + rng.uniform(0.3, 0.7)) * h / 3.0
    lat = float(lateral_border(a, np.array([y0], np.float32), side)[0])
    med = float(medial_border(a, np.array([y0], np.float32), side)[0])
    x0 = side * (med + (lat - med) * rng.uniform(0.3, 0.7))
    x, y = c.x[None, :], c.y[:, None]
    if lesion.kind == "nodule":
        r = rng.uniform(5.0, 14.0)
        return np.clip(1.3 * (1.0 - np.hypot(x - x0, y - y0) / r), 0.0, 1.0) * m.lung(side)
    scale = (0.6 + 0.6 * lesion.severity) * (1.0 if lesion.kind == "consolidation" else 1.2)
    field = np.zeros((c.rows, c.cols), np.float32)
    for _ in range(int(rng.integers(3, 7))):
        cx = x0 + rng.normal(0.0, 0.12 * (lat - med))
        cy = y0 + rng.normal(0.0, 0.05 * h)
        rx, ry = scale * rng.uniform(0.35, 0.55) * (lat - med), scale * rng.uniform(0.1, 0.16) * h
        field = np.maximum(field, np.exp(-(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2)))
    rough = 0.12 if lesion.kind == "consolidation" else 0.35
    field = field * (1.0 + rough * smooth_noise(field.shape, 16.0 / c.step, rng))
    rho = np.clip((field - 0.25) / 0.45, 0.0, 1.0) ** 1.3
    if lesion.kind == "patchy":
        rho *= np.clip(0.7 + 0.35 * smooth_noise(field.shape, 6.0 / c.step, rng), 0.0, 1.0)
    return rho * m.lung(side)


def _air_bronchograms(
    a: Anatomy, c: Canvas, m: Masks, lesion: Lesion, rho: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Lucent branching bronchi inside a consolidation (0..1 per pixel)."""
    from anaxreport.data._vessels import _tree

    hx, hy = m.hila[0 if lesion.side < 0 else 1]
    rows, cols = np.nonzero(rho > 0.5)
    if rows.size == 0:
        return np.zeros_like(rho)
    ty, tx = c.y[int(np.median(rows))], c.x[int(np.median(cols))]
    angle = float(np.arctan2(ty - hy, tx - hx))
    segs: list[tuple[float, ...]] = []
    start = (hx + 0.45 * (tx - hx), hy + 0.45 * (ty - hy))
    _tree(rng, start, angle, 0.55 * float(np.hypot(tx - hx, ty - hy)) + 10.0, 2.2, 3, segs)
    out = np.zeros_like(rho)
    draw_tubes(out, c, np.asarray(segs, np.float32))
    return np.clip(out / 3.0, 0.0, 1.0)


def _atelectasis(
    a: Anatomy, c: Canvas, m: Masks, lesion: Lesion, rng: np.random.Generator
) -> np.ndarray:
    """Plate-like band, or basal volume-loss opacity hugging the diaphragm."""
    side, h = lesion.side, (a.height_r if lesion.side < 0 else a.height_l)
    if lesion.kind == "plate":
        y0 = (lesion.zone + rng.uniform(0.2, 0.55)) * h / 3.0
        lat = float(lateral_border(a, np.array([y0], np.float32), side)[0])
        med = float(medial_border(a, np.array([y0], np.float32), side)[0])
        xm = side * (med + (lat - med) * rng.uniform(0.35, 0.6))
        half = rng.uniform(15.0, 35.0)
        tilt = rng.uniform(-0.25, 0.25)
        r = rng.uniform(1.8, 3.5) * (0.7 + 0.6 * lesion.severity)
        out = np.zeros((c.rows, c.cols), np.float32)
        seg = (xm - half, y0 - tilt * half, xm + half, y0 + tilt * half, r, r * 0.8)
        draw_tubes(out, c, np.array([seg], np.float32))
        return blur(np.clip(out / (1.4 * r), 0.0, 1.0), 1.5 / c.step) * m.lung(side)
    x, y = c.x[None, :], c.y[:, None]
    dia = diaphragm(a, c.x)[None, :]
    lat = float(lateral_border(a, np.array([h], np.float32), side)[0])
    w = np.clip(1.0 - side * x / lat, 0.0, 1.0)  # 1 medially
    depth = (12.0 + 30.0 * lesion.severity) * (0.4 + 0.6 * w)
    rho = np.clip(1.0 - (dia - y) / depth, 0.0, 1.0) ** 0.7
    rho *= np.clip(0.85 + 0.2 * smooth_noise(rho.shape, 10.0 / c.step, rng), 0.0, 1.0)
    return rho * m.lung(side)


def _lesion_statements(lesion: Lesion, regions: list[int]) -> list[Statement]:
    s = _SIDE_WORD[lesion.side]
    zone = ("upper", "mid", "lower")[lesion.zone]
    where = f"the {s} {zone} lung zone" if lesion.zone < 2 else f"the {s} lung base"
    regs = tuple(regions)
    if lesion.kind == "consolidation":
        attrs = [_yes(CONSOLIDATION), _yes(OPACITY)] + (
            [_yes(PNEUMONIA)] if lesion.pneumonia else []
        )
        tail = ", concerning for pneumonia" if lesion.pneumonia else ""
        return [Statement(f"Consolidation in {where}{tail}.", regs, tuple(attrs))]
    if lesion.kind == "patchy":
        attrs = [_yes(OPACITY)] + ([_yes(PNEUMONIA)] if lesion.pneumonia else [])
        tail = ", which may represent pneumonia" if lesion.pneumonia else ""
        return [Statement(f"Patchy opacity in {where}{tail}.", regs, tuple(attrs))]
    if lesion.kind == "nodule":
        return [Statement(f"Nodular opacity projecting over {where}.", regs, (_yes(OPACITY),))]
    text = (
        f"Plate-like atelectasis in {where}."
        if lesion.kind == "plate"
        else f"Opacity at the {s} lung base, likely atelectasis."
    )
    return [Statement(text, regs, (_yes(ATELECTASIS), _yes(OPACITY)))]


def plant(
    plan: FindingPlan,
    a: Anatomy,
    c: Canvas,
    m: Masks,
    layers: Layers,
    zones: list[np.ndarray],
    ctr: float,
    rng: np.random.Generator,
) -> list[Statement]:
    """Draw the plan into ``layers`` and write the report statements it justifies."""
    both_lungs = (_R["RL"], _R["LL"])
    out: list[Statement] = []
    later: list[Statement] = []  # negations that follow a positive, as reports often do
    if ctr > 0.5:
        word = "Mild" if ctr < 0.56 else "Moderate" if ctr < 0.62 else "Marked"
        out.append(
            Statement(
                f"{word} enlargement of the cardiac silhouette.", (_R["CS"],), (_yes(CARDIOMEGALY),)
            )
        )
    elif rng.random() < 0.7:
        out.append(Statement("Heart size is normal.", (_R["CS"],), (_no(CARDIOMEGALY),)))
    for lesion in plan.lesions:
        if lesion.kind in ("plate", "basilar"):
            rho = _atelectasis(a, c, m, lesion, rng)
            _replace_air(layers, rho, 0.45 if lesion.kind == "plate" else 0.7)
        else:
            rho = _blob(a, c, m, lesion, rng)
            if lesion.kind == "consolidation" and lesion.severity > 0.3:
                rho = rho * (1.0 - 0.8 * _air_bronchograms(a, c, m, lesion, rho, rng))
            dens = {"consolidation": 0.45 + 0.35 * lesion.severity, "nodule": 0.8}
            _replace_air(layers, rho, dens.get(lesion.kind, 0.3 + 0.3 * lesion.severity))
        out += _lesion_statements(lesion, _touched(rho, zones, lesion.side))
    if plan.edema > 0:
        _edema(a, c, m, layers, plan.edema, rng)
        regs = both_lungs + _side_regions(-1, (3, 4, 5)) + _side_regions(1, (3, 4, 5))
        text = {
            "Mild": "Mild pulmonary edema.",
            "Moderate": "Moderate pulmonary edema with perihilar haziness.",
            "Severe": "Severe pulmonary edema.",
        }[_word(plan.edema, "Mild")]
        out.append(Statement(text, regs, (_yes(EDEMA), _yes(OPACITY))))
        if plan.edema < 0.4 and rng.random() < 0.5:
            later.append(Statement("No frank alveolar edema.", both_lungs, (_no(EDEMA),)))
    _plant_pleura(plan, a, c, m, layers, zones, rng, out, later)
    if ctr > 0.5 and plan.edema > 0:
        out.append(
            Statement(
                "Findings are consistent with congestive heart failure.",
                (_R["CS"], *both_lungs),
                (_yes(HEART_FAILURE),),
            )
        )
    return out + later + _negatives(plan, ctr, rng)


def _plant_pleura(
    plan: FindingPlan,
    a: Anatomy,
    c: Canvas,
    m: Masks,
    layers: Layers,
    zones: list[np.ndarray],
    rng: np.random.Generator,
    out: list[Statement],
    later: list[Statement],
) -> None:
    """Effusions and pneumothoraces, with their statements (and occasional later negations)."""
    sides = [s for s, v in zip((-1, 1), plan.effusion, strict=True) if v > 0]
    for side in sides:
        rho = _effusion(a, c, m, layers, side, plan.effusion[0 if side < 0 else 1])
        regs = tuple(dict.fromkeys([*_touched(rho, zones, side), *_side_regions(side, (4, 6))]))
        sev = plan.effusion[0 if side < 0 else 1]
        out.append(
            Statement(f"{_word(sev)} {_SIDE_WORD[side]} pleural effusion.", regs, (_yes(EFFUSION),))
        )
        if sev < 0.7 and rng.random() < 0.3:
            later.append(Statement("No large pleural effusion.", regs, (_no(EFFUSION),)))
    for side, sev in zip((-1, 1), plan.pneumothorax, strict=True):
        if sev <= 0:
            continue
        rho = _pneumothorax(a, c, m, layers, side, sev)
        regs = tuple(_touched(rho, zones, side, share=0.1))
        where = "apical " if sev < 0.5 else ""
        out.append(
            Statement(
                f"{_word(sev)} {_SIDE_WORD[side]} {where}pneumothorax.", regs, (_yes(PNEUMOTHORAX),)
            )
        )
        if rng.random() < 0.4:
            later.append(Statement("No tension pneumothorax.", regs, (_no(PNEUMOTHORAX),)))


def _negatives(plan: FindingPlan, ctr: float, rng: np.random.Generator) -> list[Statement]:
    """The pertinent negatives and normal statements a radiologist adds."""
    lungs = (_R["RL"], _R["LL"])
    out: list[Statement] = []
    if not any(plan.effusion) and rng.random() < 0.75:
        cps = lungs + _side_regions(-1, (6,)) + _side_regions(1, (6,))
        out.append(Statement("No pleural effusion.", cps, (_no(EFFUSION),)))
    if not any(plan.pneumothorax) and rng.random() < 0.75:
        out.append(Statement("No pneumothorax.", lungs, (_no(PNEUMOTHORAX),)))
    if not plan.lesions and plan.edema == 0 and rng.random() < 0.8:
        text = "The lungs are clear." if rng.random() < 0.5 else "No focal consolidation."
        attrs = ("nlp|yes|normal", _no(OPACITY)) if "clear" in text else (_no(CONSOLIDATION),)
        out.append(Statement(text, lungs, attrs))
    if rng.random() < 0.5:
        regs = (_R["Med"], region("UMed").index, _R["RHS"], _R["LHS"])
        out.append(
            Statement("The mediastinal and hilar contours are normal.", regs, ("nlp|yes|normal",))
        )
    if rng.random() < 0.2:
        out.append(
            Statement("The trachea is midline.", (region("Trach").index,), ("nlp|yes|normal",))
        )
    if plan.normal and ctr <= 0.5 and rng.random() < 0.5:
        out.append(Statement("No acute cardiopulmonary process.", lungs, ("nlp|yes|normal",)))
    return out


def scene_graph_attributes(statements: list[Statement], dicom_id: str) -> list[dict]:
    """Chest ImaGenome ``attributes[]``: one entry per region mentioned, phrases in order."""
    by_region: dict[int, dict] = {}
    for n, st in enumerate(statements):
        for idx in st.regions:
            name = REGIONS[idx].name
            entry = by_region.setdefault(
                idx,
                {
                    "name": name.capitalize(),
                    "bbox_name": name,
                    "synsets": [],
                    "object_id": f"{dicom_id}_{name}",
                    "phrases": [],
                    "phrase_IDs": [],
                    "sections": [],
                    "attributes": [],
                    "comparison_cues": [],
                    "temporal_cues": [],
                    "severity_cues": [],
                    "texture_cues": [],
                },
            )
            entry["phrases"].append(st.text)
            entry["phrase_IDs"].append(f"{dicom_id}|{n}")
            entry["sections"].append("finalreport")
            entry["attributes"].append(list(st.attributes))
            for key in ("comparison_cues", "temporal_cues", "severity_cues", "texture_cues"):
                entry[key].append([])
    return [by_region[i] for i in sorted(by_region)]
