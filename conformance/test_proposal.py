"""Proposals (``--nnc-proposal``): the submission checker's verdict on each manifest.

A run with proposals first checks every manifest against the committed JSON Schema and against
what a schema cannot know (anchors, checkpoints, tiers, registered methods, file hashes). A
manifest with problems fails here, listing every problem with its file and field, and the plugin
runs nothing else: no model is loaded for a submission that is not well formed. The proposals'
operating points themselves run as cases of the criteria they apply to.
"""

from __future__ import annotations

import pytest

from nnconform import proposal
from nnconform.records import gate

pytestmark = pytest.mark.criterion("proposal")

PROPOSALS = proposal.active_proposals()

if PROPOSALS:  # defined only for runs with --nnc-proposal (no empty parameter set otherwise)
    @pytest.mark.parametrize("submitted", PROPOSALS, ids=[p.name for p in PROPOSALS])
    def test_submission_manifest(submitted, nnc_record):
        """The proposal's manifest passes the submission checker: schema, anchors, checkpoints, tiers,
        registered methods with configs that build, no collision with reference operating points, and every
        submitted file present with the sha256 the manifest pins."""
        for problem in submitted.problems:
            nnc_record(problem.record(submitted.name))
        points = submitted.to_dict()["operating_points"]
        count = sum(len(v) for v in points.values())
        rec = nnc_record(gate(
            "proposal.manifest", submitted.name, submitted.ok, measured=len(submitted.problems), expected=0,
            criterion="proposal", details=submitted.to_dict(),
            message=(f"{submitted.manifest}: valid; {submitted.name} {submitted.version} ({submitted.contact}) "
                     f"claims {count} operating point(s) in {', '.join(submitted.criteria)}" if submitted.ok else
                     f"{len(submitted.problems)} problem(s) in the submission:\n" +
                     "\n".join(f"  - {p}" for p in submitted.problems))))
        assert rec.passed, rec.message
