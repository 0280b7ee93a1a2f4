from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from medlens.errors import OutputError
from medlens.io._common import WriteNotes, read_source_headers
from medlens.io.seg import build_seg
from medlens.io.sr import build_sr, write_sr


def _walk(items, group: str | None = None):
    """Yield (group tracking identifier, concept meaning, value, unit, item) for NUM/CODE items."""
    for item in items:
        if item.get("ValueType") == "CONTAINER" and "ContentSequence" in item:
            ident = next(
                (
                    c.TextValue
                    for c in item.ContentSequence
                    if c.get("ValueType") == "TEXT"
                    and c.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier"
                ),
                group,
            )
            yield from _walk(item.ContentSequence, ident)
            continue
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.get("ValueType") == "NUM":
            mv = item.MeasuredValueSequence[0]
            yield (
                group,
                name,
                float(mv.NumericValue),
                mv.MeasurementUnitsCodeSequence[0].CodeValue,
                item,
            )
        elif item.get("ValueType") == "CODE":
            yield group, name, item.ConceptCodeSequence[0].CodeMeaning, None, item


def _algorithms(item: Dataset) -> dict[str, str]:
    out = {}
    for c in item.get("ContentSequence", []):
        out[c.ConceptNameCodeSequence[0].CodeMeaning] = c.get("TextValue")
    return out


@pytest.mark.external
@pytest.mark.parametrize("with_seg", [True, False], ids=["seg-referenced", "image-level"])
def test_sr_carries_volumes_lesions_findings(tmp_path, make_result, dciodvfy, with_seg):
    result = make_result()
    sources = read_source_headers(result.image)
    seg = build_seg(result, sources, WriteNotes()) if with_seg else None
    path = write_sr(result, sources, seg, tmp_path / "sr.dcm")
    errors, _ = dciodvfy(path)
    assert errors == []

    sr = hd.sr.srread(path)
    assert sr.StudyInstanceUID == result.image.metadata["StudyInstanceUID"]
    report = sr.content
    volumetric = report.get_volumetric_roi_measurement_groups()
    tumours = next(m for m in result.chained[0].prediction.measurements if m.label == "liver_tumor")
    if with_seg:
        assert [g.tracking_identifier for g in volumetric] == [
            "ct-lesion-measure liver",
            "ct-lesion-measure spleen",
            "ct-lesion-measure liver_tumor",
        ]
        refs = [g.referenced_segment for g in volumetric]
        assert [r.referenced_segment_numbers for r in refs] == [[1], [2], [3]]
        for g in volumetric:
            assert g.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    else:
        assert volumetric == []
    # Each lesion's group references the source image through its centre (the probe:
    # they referenced nothing; the label's segment holds every lesion, so not that).
    by_uid = {str(ds.SOPInstanceUID): k for k, ds in enumerate(sources)}
    image = result.image
    affine = np.asarray(image.direction) * np.asarray(image.spacing)[None, :]
    lesion_groups = {
        str(g.tracking_identifier): g
        for g in report.get_planar_roi_measurement_groups() + report.get_image_measurement_groups()
        if " lesion " in str(g.tracking_identifier)
    }
    assert len(lesion_groups) == len(tumours.lesions) > 0
    for les in tumours.lesions:
        g = lesion_groups[f"ct-lesion-measure liver_tumor lesion {les.index}"]
        (ref,) = g.source_images
        k = np.linalg.solve(affine, np.asarray(les.centroid_lps) - np.asarray(image.origin))[2]
        assert by_uid[ref.referenced_sop_instance_uid] == round(float(k))
    groups = {g for g, *_ in _walk(sr.ContentSequence) if g is not None}
    assert not [g for g in groups if " liver lesion" in g or " spleen lesion" in g], groups

    chained = result.chained[0].prediction.measurements
    values = list(_walk(sr.ContentSequence))
    vols = {g: v for g, name, v, unit, _ in values if name == "Volume" and unit == "ml"}
    for meas in chained:
        assert vols[f"ct-lesion-measure {meas.label}"] == pytest.approx(meas.volume_ml, rel=1e-6)
        counts = [
            v
            for g, n, v, u, _ in values
            if g == f"ct-lesion-measure {meas.label}" and n == "Number of lesions"
        ]
        assert counts == [meas.lesion_count]
    tumor = next(m for m in chained if m.label == "liver_tumor")
    for les in tumor.lesions:
        group = f"ct-lesion-measure liver_tumor lesion {les.index}"
        got = {(n, u): v for g, n, v, u, _ in values if g == group}
        assert got[("Volume", "ml")] == pytest.approx(les.volume_ml)
        assert got[("Diameter", "mm")] == pytest.approx(les.recist_diameter_mm)
        assert got[("Long axis", "mm")] == pytest.approx(les.longest_axis_mm)

    finding = [
        (n, v, u, item) for g, n, v, u, item in values if g == "ct-abdomen-seg finding liver_tumor"
    ]
    prob = next(x for x in finding if x[0] == "Probability")
    assert prob[1] == pytest.approx(0.83)
    assert prob[2] == "{probability}"
    assert ("Neoplasm", "Present") in {(n, v) for n, v, _, _ in finding}
    # Every measurement names the plugin and version that made it.
    for group, _name, _v, unit, item in values:
        if unit is None:
            continue
        algo = next(
            c
            for c in item.ContentSequence
            if c.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Name"
        )
        version = next(
            c
            for c in item.ContentSequence
            if c.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Version"
        )
        assert group.startswith(algo.TextValue)
        assert version.TextValue == "1.2.3"


def test_sr_refuses_when_nothing_to_report(make_result):
    result = make_result(chained=False, findings=False)
    sources = read_source_headers(result.image)
    with pytest.raises(OutputError, match="no measurements or findings"):
        build_sr(result, sources, None)


def test_the_device_observer_is_one_device_across_reports() -> None:
    # The probe: a new Device Observer UID per report made every report a new device.
    from medlens_volume_measure.manifest import MANIFEST

    from medlens.io._common import device_observer

    def uid(manifest: object) -> str:
        obs = device_observer(manifest)  # type: ignore[arg-type]
        return str(obs.observer_identifying_attributes[0].UID)

    assert uid(MANIFEST) == uid(MANIFEST)
    assert uid(MANIFEST) != uid(MANIFEST.model_copy(update={"version": "9.9.9"}))
