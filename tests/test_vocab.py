"""The vocabulary is the one source of names, orders and codes."""

import pytest

from anaxreport import vocab


def test_orders_match_the_design():
    assert vocab.REGION_NAMES[:7] == (
        "right lung", "right apical zone", "right upper lung zone", "right mid lung zone",
        "right lower lung zone", "right hilar structures", "right costophrenic angle",
    )  # fmt: skip
    assert vocab.REGION_NAMES[14:] == (
        "mediastinum",
        "upper mediastinum",
        "cardiac silhouette",
        "trachea",
    )
    assert [r.abbreviation for r in vocab.REGIONS] == (
        [
            "RL",
            "RAZ",
            "RULZ",
            "RMLZ",
            "RLLZ",
            "RHS",
            "RCA",
            "LL",
            "LAZ",
            "LULZ",
            "LMLZ",
            "LLLZ",
            "LHS",
            "LCA",
            "Med",
            "UMed",
            "CS",
            "Trach",
        ]
    )
    assert vocab.FINDING_NAMES == (
        "lung opacity", "pleural effusion", "atelectasis", "enlarged cardiac silhouette",
        "pulmonary edema/hazy opacity", "pneumothorax", "consolidation",
        "fluid overload/heart failure", "pneumonia",
    )  # fmt: skip
    assert [r.index for r in vocab.REGIONS] == list(range(18))
    assert [r.class_id for r in vocab.REGIONS] == list(range(1, 19))


def test_codes_and_laterality():
    assert vocab.finding("pleural effusion").code.value == "60046008"
    assert vocab.finding("L4").code.value == "8186001"
    assert vocab.finding("pneumonia").category is vocab.FindingCategory.DISEASE
    assert vocab.finding("lung opacity").attribute == "anatomicalfinding|yes|lung opacity"
    left = vocab.region("LCA")
    assert left.laterality is vocab.Laterality.LEFT and left.site.scheme == vocab.LOCAL_SCHEME
    assert vocab.region("right lung").fhir_site.value == "3341006"
    assert vocab.region("UMed").modifier.value == "264217000"
    assert vocab.region("trachea").laterality is vocab.Laterality.UNPAIRED
    assert vocab.Laterality.RIGHT.value.fhir_system == "http://snomed.info/sct"


def test_lookup_errors_name_the_choices():
    with pytest.raises(ValueError, match="unknown region 'left ear'"):
        vocab.region("left ear")
    with pytest.raises(ValueError, match=r"outside 0\.\.8"):
        vocab.finding(9)
    with pytest.raises(ValueError, match="scheme"):
        vocab.CodedConcept("1", "XYZ", "thing")
