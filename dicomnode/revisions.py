"""Revisions of a job's results: what a run read, and whether a re-run changes anything.

A job's results are revised, never duplicated (``docs/revisions.md``). Each
run records the series it read (:func:`describe_inputs`: per series, how many
instances and a digest of which) and the model; the next run of the job
compares its own with the last revision's (:func:`input_changes`):

- same inputs, same model: the same revision again (same UIDs: a resend
  replaces nothing and adds nothing); a re-run queued by a late series stops
  there (:class:`InputsUnchanged`), before inference;
- anything else: revision n + 1, with new UIDs, its SR citing the SRs of the
  revisions before it in Predecessor Documents Sequence.

This module is pure: no database, no DICOM writing. The worker loads the
:class:`PriorRevision` rows, the pipeline context decides, the writers cite.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Storage classes whose instances are reports a revision cites (every SR storage class).
SR_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
LATE = "late"  # Job.rerun of a job assembly queued again for late instances


class InputsUnchanged(Exception):  # noqa: N818 - an outcome, not an error
    """A re-run for late instances found the pipeline's inputs and model unchanged.

    The message is the timeline's sentence; the previous revision stands.
    """


@dataclass(frozen=True)
class PriorRevision:
    """One earlier revision of the job's results, as recorded in ``job_revisions``."""

    number: int
    model: str | None
    inputs: Mapping[str, Mapping[str, Any]]
    objects: Sequence[Mapping[str, str]] = field(default_factory=tuple)

    def reports(self) -> list[dict[str, str]]:
        """The SR objects of this revision (what a later revision cites)."""
        return [
            dict(o)
            for o in self.objects
            if str(o.get("sop_class_uid", "")).startswith(SR_CLASS_PREFIX)
        ]


@dataclass(frozen=True)
class NewRevision:
    """What a finished run records: its revision number, model, inputs and objects."""

    number: int
    model: str | None
    inputs: Mapping[str, Mapping[str, Any]]
    objects: Sequence[Mapping[str, str]]
    reason: str | None = None


@dataclass(frozen=True)
class Predecessor:
    """An SR a revised SR cites: the four UIDs Predecessor Documents Sequence holds."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def describe_inputs(series: Iterable[Any]) -> dict[str, dict[str, Any]]:
    """Per series (a :class:`~dicomnode.pipelines.SeriesInput`): instance count and digest.

    The digest is over the instances' file names, which are their SOP Instance
    UIDs: a series that gained, lost or swapped an instance reads as changed;
    a resend of the same instances does not.
    """
    described: dict[str, dict[str, Any]] = {}
    for item in series:
        names = sorted(p.name for p in item.paths)
        digest = hashlib.sha1("\n".join(names).encode(), usedforsecurity=False).hexdigest()
        described[str(item.series_instance_uid)] = {
            "instances": len(names),
            "digest": digest,
            "modality": item.modality,
            "description": item.series_description,
        }
    return described


def _name(uid: str, entry: Mapping[str, Any]) -> str:
    what = ", ".join(
        part
        for part in (
            entry.get("modality") or "",
            f"'{entry['description']}'" if entry.get("description") else "",
            f"{entry.get('instances', 0)} instances",
        )
        if part
    )
    return f"series {uid} ({what})"


def input_changes(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """What differs between two :func:`describe_inputs`, one phrase each; empty: the same."""
    added = [uid for uid in new if uid not in old]
    removed = [uid for uid in old if uid not in new]
    changed = [
        uid for uid in new if uid in old and new[uid].get("digest") != old[uid].get("digest")
    ]
    phrases: list[str] = []
    if len(added) == 1 and len(removed) == 1:
        phrases.append(
            f"{_name(added[0], new[added[0]])} replaces {_name(removed[0], old[removed[0]])}"
        )
    else:
        phrases += [f"{_name(uid, new[uid])} added" for uid in added]
        phrases += [f"{_name(uid, old[uid])} no longer read" for uid in removed]
    for uid in changed:
        phrases.append(
            f"series {uid} has {new[uid].get('instances', 0)} instances "
            f"(was {old[uid].get('instances', 0)}, or others)"
        )
    return phrases


def predecessors(history: Sequence[PriorRevision], below: int) -> tuple[Predecessor, ...]:
    """The SRs of every revision numbered under *below*, oldest first, each once.

    Every earlier revision is cited, not only the last, so a reader finds the
    current report (the one no other cites) without walking a chain.
    """
    seen: dict[str, Predecessor] = {}
    for revision in sorted(history, key=lambda r: r.number):
        if revision.number >= below:
            continue
        for report in revision.reports():
            seen.setdefault(
                report["sop_instance_uid"],
                Predecessor(
                    study_instance_uid=report.get("study_instance_uid", ""),
                    series_instance_uid=report["series_instance_uid"],
                    sop_class_uid=report["sop_class_uid"],
                    sop_instance_uid=report["sop_instance_uid"],
                ),
            )
    return tuple(seen.values())
