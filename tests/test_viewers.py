"""Results in readers we did not write: OHIF v3 over Orthanc's DICOMweb, the Cornerstone3D adapters.

One session for the module: the three pipelines run on the demo's studies
(``dicomnode.demo.demo_studies``, what ``make demo`` pushes), on the studies
of each pipeline's end-to-end test (same generators and seeds) and on a
chest CT without nodules; sources and results go into one Orthanc with its
DICOMweb plugin, which the prebuilt OHIF viewer (``@ohif/app``) reads through
:class:`~dicomnode.testing.viewer.ViewerServer` in headless Chromium. Per
study the test opens it, loads each SEG and SR, and asserts from the page
(the DOM and OHIF's own services, ``window.services``) that no error was
logged or shown, that the segment list has the SEG's segments in their
recommended colours and that the SR's findings are listed and drawn on the
images the SR puts them on. Screenshots go to ``test-artifacts/viewer/``.
Every SEG and SR is also read by the Cornerstone3D adapters in Node.

OHIF 3.13 does not render presentation states (OHIF/Viewers#4106): the GSPS
is checked by dciodvfy, highdicom and DCMTK elsewhere; here only that the
study with it loads cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicomnode.testing.peers import Orthanc, dciodvfy, dciodvfy_warnings
from dicomnode.testing.viewer import Browser, ViewerServer, cornerstone_parse, missing_viewer
from tests.runs import FilesPriors, run_pipeline

pytestmark = pytest.mark.slow

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "viewer"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
PR_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"


@dataclass
class Study:
    """One study in the session: its files, its pipeline, what the pipeline wrote."""

    name: str
    pipeline: str
    sources: list[Path]
    results: list[Path] = field(default_factory=list)
    # A follow-up: the prior study's files (in Orthanc too; the pipeline compares with it).
    prior: list[Path] = field(default_factory=list)

    @property
    def uid(self) -> str:
        return str(pydicom.dcmread(self.sources[0], stop_before_pixels=True).StudyInstanceUID)

    def result(self, sop_class: str) -> Path | None:
        found = [p for p in self.results if _sop_class(p) == sop_class]
        return found[0] if found else None


def _sop_class(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPClassUID)


def _studies(root: Path) -> list[Study]:
    """The demo's studies, the end-to-end tests' studies and a chest CT without nodules."""
    from dicomnode.demo import demo_studies
    from dicomnode.synthetic.ct import write_chest_ct_study
    from dicomnode.synthetic.fundus import write_fundus_study
    from dicomnode.synthetic.mr import write_mr_study

    demo = list(demo_studies(root / "demo").values())
    mr = write_mr_study(root / "e2e-mr", seed=21)  # tests/test_brain_tumor.py SEED
    return [
        Study("demo-ct", "lung_nodule", demo[0]),
        Study("demo-mr", "brain_tumor", demo[1]),
        Study("demo-op", "fundus_dr", demo[2]),
        # tests/test_lung_nodule.py, test_brain_tumor.py, test_fundus_dr.py end to end.
        Study(
            "e2e-ct",
            "lung_nodule",
            write_chest_ct_study(root / "e2e-ct", seed=21, n_slices=64).paths,
        ),
        Study("e2e-mr", "brain_tumor", sorted(p for ps in mr.series.values() for p in ps)),
        Study(
            "e2e-op",
            "fundus_dr",
            [
                i.path
                for i in write_fundus_study(
                    root / "e2e-op", {"R": 2, "L": 4}, seed=24, size=512
                ).images
            ],
        ),
        Study(
            "empty-ct",
            "lung_nodule",
            write_chest_ct_study(root / "empty-ct", seed=12, nodules=(), n_slices=48).paths,
        ),
        # tests/test_enhanced.py's chest phantom as one Enhanced CT instance: results
        # reference its frames.
        Study("enhanced-ct", "lung_nodule", [_enhanced_ct(root / "enhanced-ct")]),
        *_follow_ups(root),
    ]


def _follow_ups(root: Path) -> list[Study]:
    """tests/test_lung_followup.py's and test_brain_followup.py's pairs: follow-up SRs."""
    from dicomnode.synthetic.followup import (
        chest_pair,
        head_pair,
        write_chest_pair,
        write_head_pair,
    )

    chest = write_chest_pair(chest_pair(3000007), root / "followup-ct")
    head = write_head_pair(head_pair(3100003, scenario="progression"), root / "followup-mr")
    files = {
        name: sorted(p for ps in study.series.values() for p in ps) for name, study in head.items()
    }
    return [
        Study("followup-ct", "lung_nodule", chest["followup"], prior=chest["baseline"]),
        Study("followup-mr", "brain_tumor", files["followup"], prior=files["baseline"]),
    ]


def _enhanced_ct(root: Path) -> Path:
    from dicomnode.synthetic.ct import write_chest_ct_study
    from dicomnode.synthetic.multiframe import enhanced

    study = write_chest_ct_study(root / "slices", seed=11, n_slices=48, rows=192, columns=192)
    path = root / "enhanced.dcm"
    enhanced([pydicom.dcmread(p) for p in study.paths]).save_as(path, enforce_file_format=True)
    return path


@dataclass
class Session:
    studies: dict[str, Study]
    orthanc: Orthanc
    viewer: ViewerServer
    browser: Browser


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    why = missing_viewer()
    if why:
        pytest.fail(f"the viewer tests need what `make viewer-deps` installs: {why}")
    root = tmp_path_factory.mktemp("viewers")
    studies = _studies(root / "studies")
    for job_id, study in enumerate(studies, start=1):
        work = root / "work" / study.name
        priors = FilesPriors(study.prior, study.sources, work) if study.prior else None
        study.results = run_pipeline(study.pipeline, study.sources, work, job_id, priors)
    with Orthanc(root / "orthanc", dicomweb=True) as orthanc:
        for study in studies:
            for path in [*study.prior, *study.sources, *study.results]:
                orthanc.upload(path)
        with ViewerServer(orthanc.url) as viewer, Browser(root / "chromium", ARTIFACTS) as browser:
            # The onboarding tour would cover the viewport: mark it seen.
            browser.driver.get(viewer.url + "/")
            browser.script(
                "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']))"
            )
            yield Session({s.name: s for s in studies}, orthanc, viewer, browser)


# -- what the results say, read with highdicom -----------------------------------------------


def seg_segments(path: Path) -> list[tuple[int, str, tuple[int, int, int]]]:
    """(number, label, display colour as sRGB) of each segment of a SEG."""
    seg = hd.seg.segread(path)
    found = []
    for number in seg.segment_numbers:
        description = seg.get_segment_description(number)
        lab = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue)
        found.append((number, str(description.SegmentLabel), lab.to_rgb(clip=True)))
    return found


def sr_findings(path: Path) -> dict[str, str]:
    """Tracking UID -> the SOP Instance UID of the image its first region is drawn on (None: 3D)."""
    sr = pydicom.dcmread(path)
    drawn: dict[str, str] = {}
    container = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    for group in container.ContentSequence:
        items = group.ContentSequence
        uid = next(str(i.UID) for i in items if i.ValueType == "UIDREF")
        for item in items:
            if item.ValueType == "SCOORD" and uid not in drawn:
                drawn[uid] = str(
                    item.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                )
            elif item.ValueType == "SCOORD3D" and uid not in drawn:
                drawn[uid] = ""
    return drawn


def prior_findings(path: Path) -> list[str]:
    """Tracking UIDs whose every group is at a follow-up's "prior" time point (resolved findings)."""
    sr = pydicom.dcmread(path)
    container = next(
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    points: dict[str, set[str]] = {}
    for group in container.ContentSequence:
        items = group.ContentSequence
        uid = next(str(i.UID) for i in items if i.ValueType == "UIDREF")
        point = next(
            (
                str(i.TextValue)
                for i in items
                if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "C2348792"
            ),
            "",
        )
        points.setdefault(uid, set()).add(point)
    return [uid for uid, seen in points.items() if seen == {"prior"}]


# -- driving OHIF -------------------------------------------------------------------------------


def _fatal(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Console errors, uncaught exceptions, unhandled rejections: what must not happen."""
    return [(kind, message) for kind, message in problems if kind != "warn"]


def _error_toasts(browser: Browser) -> list[str]:
    return list(
        browser.script(
            "return [...document.querySelectorAll('[data-sonner-toast][data-type=\"error\"]')]"
            ".map(t => t.innerText)"
        )
    )


def _open(session: Session, study: Study) -> None:
    browser = session.browser
    browser.driver.get(session.viewer.study_url(study.uid))
    browser.wait_for(
        lambda: browser.script(
            "return window.services && window.services.displaySetService"
            ".getActiveDisplaySets().length"
        ),
        60,
        f"{study.name}'s display sets",
    )
    browser.wait_for(
        lambda: browser.driver.find_elements(
            "css selector", '[data-cy="study-browser-thumbnail-no-image"]'
        ),
        30,
        "the derived series' thumbnails",
    )


def _load(session: Session, modality: str) -> None:
    """Double-click the study browser's entry of the (one) *modality* series."""
    from selenium.webdriver.common.action_chains import ActionChains

    browser = session.browser
    (entry,) = [
        e
        for e in browser.driver.find_elements(
            "css selector", '[data-cy="study-browser-thumbnail-no-image"]'
        )
        if e.text.split("\n")[0].strip() == modality
    ]
    ActionChains(browser.driver).double_click(entry).perform()


def _show_panel(browser: Browser, panel: str, *texts: str) -> str:
    """Open the right-hand *panel* (its toolbar button toggles it) until it shows *texts*."""

    def shown() -> str:
        text = browser.text()
        if all(t in text for t in texts):
            return text
        browser.driver.find_element("css selector", f'[data-cy="{panel}-btn"]').click()
        time.sleep(1.0)
        return ""

    return str(browser.wait_for(shown, 30, f"{panel} showing {texts}"))


def _click_button(browser: Browser, text: str) -> bool:
    for button in browser.driver.find_elements("tag name", "button"):
        if button.text.strip() == text and button.is_displayed():
            button.click()
            return True
    return False


STUDY_NAMES = [
    "demo-ct",
    "demo-mr",
    "demo-op",
    "e2e-ct",
    "e2e-mr",
    "e2e-op",
    "empty-ct",
    "enhanced-ct",
    "followup-ct",
    "followup-mr",
]


@pytest.mark.parametrize("name", STUDY_NAMES)
def test_results_load_in_ohif(session: Session, name: str) -> None:
    study = session.studies[name]
    browser = session.browser
    _open(session, study)
    problems = browser.problems()
    seg = study.result(SEG_CLASS)
    if seg is not None:
        _check_seg(session, study, seg)
        problems += browser.problems()
        _open(session, study)  # a fresh viewport for the SR
        problems += browser.problems()
    sr = study.result(SR_CLASS)
    assert sr is not None
    _check_sr(session, study, sr)
    problems += browser.problems()
    assert _fatal(problems) == [], _fatal(problems)
    assert _error_toasts(browser) == []


def _check_seg(session: Session, study: Study, seg: Path) -> None:
    browser = session.browser
    expected = seg_segments(seg)
    _load(session, "SEG")
    # OHIF asks before it overlays a SEG on the viewport.
    browser.wait_for(
        lambda: _click_button(browser, "Yes"), 30, "the 'open this Segmentation?' prompt"
    )
    loaded = browser.wait_for(
        lambda: browser.script(
            "const s = window.services.segmentationService; const vp ="
            " window.services.viewportGridService.getActiveViewportId();"
            " return s.getSegmentations().map(g => Object.values(g.segments).map(x =>"
            " [x.segmentIndex, x.label, s.getSegmentColor(vp, g.segmentationId, x.segmentIndex)]))[0]"
        ),
        60,
        f"{study.name}'s segmentation in the segmentation service",
    )
    assert [(n, label) for n, label, _ in loaded] == [(n, label) for n, label, _ in expected]
    for (_, label, shown), (_, _, recommended) in zip(loaded, expected, strict=True):
        # OHIF shows the SEG's Recommended Display CIELab Value (round trip: within 2 of 255).
        assert np.allclose(shown[:3], recommended, atol=2), (label, shown, recommended)
    text = _show_panel(browser, "panelSegmentation", *(label for _, label, _ in expected))
    assert all(label in text for _, label, _ in expected)
    browser.screenshot(ARTIFACTS / f"{study.name}-seg.png")


def _check_sr(session: Session, study: Study, sr: Path) -> None:
    browser = session.browser
    everything = sr_findings(sr)
    # A follow-up's resolved findings are only in the prior's Frame of Reference: OHIF lists
    # them but cannot load them onto the current study's images.
    prior_only = {uid for uid in everything if uid in set(prior_findings(sr))}
    drawn = {uid: image for uid, image in everything.items() if uid not in prior_only}
    _load(session, "SR")
    measurements = browser.wait_for(
        lambda: browser.script(
            "const d = window.services.displaySetService.getActiveDisplaySets()"
            ".find(x => x.Modality === 'SR'); const skip = new Set(arguments[0]);"
            " return d && d.isLoaded && d.measurements && d.measurements.every(m => m.loaded"
            " || skip.has(m.TrackingUniqueIdentifier)) && {rehydratable: d.isRehydratable,"
            " items: d.measurements.filter(m => m.loaded).map(m =>"
            " [m.TrackingUniqueIdentifier, m.TrackingIdentifier, m.ReferencedSOPInstanceUID || '',"
            " m.labels.map(l => l.label + ': ' + l.value)])};",
            sorted(prior_only),
        ),
        60,
        f"{study.name}'s SR measurements drawn on their images",
    )
    items = measurements["items"]
    # Every finding is listed, once, drawn on the image its first region is on.
    assert {uid for uid, *_ in items} == set(drawn)
    for uid, label, image, _ in items:
        assert image == drawn[uid], (label, image, drawn[uid])
    browser.screenshot(ARTIFACTS / f"{study.name}-sr.png")
    if measurements["rehydratable"]:
        # OHIF offers to track (load) the measurements: they join its measurement list.
        browser.wait_for(lambda: _click_button(browser, "Yes"), 30, "the tracking prompt")
        count = browser.wait_for(
            lambda: len(
                browser.script("return window.services.measurementService.getMeasurements()")
            ),
            30,
            "the tracked measurements",
        )
        assert count == len(items)
        # Listed under "Measurements" or, for points, "Additional Findings", with the count,
        # each under its finding type ("Nodule"); "nothing found" has none.
        text = _show_panel(browser, "trackedMeasurements", f"({len(items)})")
        if study.name != "empty-ct":
            assert text.count("Nodule") >= len(items), text
        browser.screenshot(ARTIFACTS / f"{study.name}-sr-measurements.png")


def test_cornerstone_adapters_read_every_seg_and_sr(session: Session) -> None:
    jobs, expected = [], []
    for study in session.studies.values():
        for path in study.results:
            sop_class = _sop_class(path)
            if sop_class == SEG_CLASS:
                series = str(
                    pydicom.dcmread(path, stop_before_pixels=True)
                    .ReferencedSeriesSequence[0]
                    .SeriesInstanceUID
                )
                sources = [
                    p
                    for p in study.sources
                    if str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID) == series
                ]
                sources.sort(
                    key=lambda p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber)
                )
                jobs.append({"file": path, "sources": sources})
                expected.append((study, path, "SEG"))
            elif sop_class == SR_CLASS:
                jobs.append({"file": path, "sources": study.sources})
                expected.append((study, path, "SR"))
    results = cornerstone_parse(jobs)
    for (study, path, kind), result in zip(expected, results, strict=True):
        assert result["problems"] == [], (study.name, kind, result["problems"])
        if kind == "SEG":
            segments = seg_segments(path)
            assert [(s["number"], s["label"]) for s in result["segments"]] == [
                (n, label) for n, label, _ in segments
            ]
            labels = {
                s.SegmentLabel: s.RecommendedDisplayCIELabValue
                for s in hd.seg.segread(path).SegmentSequence
            }
            assert [s["cielab"] for s in result["segments"]] == [
                list(labels[s["label"]]) for s in result["segments"]
            ]
            # The segments landed on source images (frames of a multi-frame source too).
            assert result["images_with_segments"] > 0, study.name
        else:
            points = result["tools"].get("Probe", [])
            # Points are the one standard graphic Cornerstone3D reads into a tool without its
            # own tracking identifiers: one per nodule (its key-slice centre; in 3D it is an
            # ellipsoid, no point) and per region (its 3D centre).
            expected_points = {"lung_nodule": 1, "brain_tumor": 1, "fundus_dr": 0}[study.pipeline]
            # Findings drawn on a current image (a follow-up's resolved ones are in the
            # prior's frame only: no point, no tool).
            drawn = [image for image in sr_findings(path).values() if image]
            findings = len(drawn) if study.name != "empty-ct" else 0
            assert len(points) == expected_points * findings, (study.name, result["tools"])
            if study.pipeline == "lung_nodule":
                # Each on the source image (frame) it is drawn on, resolved by the adapters
                # (a brain region's point is 3D: no image).
                assert all(p["image"] for p in points), (study.name, points)
            if study.name == "empty-ct":
                # "Nodule: Absent", drawn as a rectangle of the whole middle image.
                assert len(result["tools"]["RectangleROI"]) == 1


def test_every_result_is_valid_for_dciodvfy(session: Session) -> None:
    for study in session.studies.values():
        kinds = sorted(_sop_class(p) for p in study.results)
        for path in study.results:
            assert dciodvfy(path) == [], (study.name, path.name, dciodvfy(path))
            # Warnings too, but those about private designators the object declares.
            assert dciodvfy_warnings(path) == [], (study.name, path.name)
        if study.pipeline != "fundus_dr" and study.name != "empty-ct":
            assert PR_CLASS in kinds, study.name  # outlines for PACS without SEG/SR
