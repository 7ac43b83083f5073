"""The model-update criterion's engine: what a run computes once, and one pipeline per kind of case.

:class:`UpdateRuns` is the criterion's session state (``kit.criterion_state(config, "updates", ...)``):
it encodes each (lineage pair, operating point) payload once and runs the cases, each returning a
:class:`CaseResult` (its records, in the order they are made). Missing inputs are not handled here:
:class:`~nnconform.anchors.WeightsUnavailable`, :class:`~nnconform.data.DatasetUnavailable` and
:class:`~nnconform.updates.CodecUnavailable` propagate, so the conformance file can skip with their
messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..records import CheckRecord
from ..stats import top1_agreement, wilson_interval
from .checks import (check_deterministic_encoding, check_documented_change, check_lineage_accuracy,
                     check_payload_safety, check_reconstruction, check_size_claim, check_smoke_lineage_accuracy,
                     check_nnc_lineage_decode, check_submitted_decode, check_submitted_file, check_update_accuracy,
                     comparison_record, nnc_lineage_size_record, task_comparison_record)
from .codec import CodecUnavailable, apply_update, encode_update, make_codec
from .compare import compare_results, weight_changes
from .plan import LineagePair, UpdatePlan, UpdatePoint

CRITERION = "updates"


@dataclass
class CaseResult:
    """The records of one case, and why it stopped short when it did (``skip``)."""

    records: list[CheckRecord] = field(default_factory=list)
    skip: str = ""

    @property
    def failed(self) -> list[CheckRecord]:
        """The records that did not pass."""
        return [r for r in self.records if not r.passed]

    @property
    def message(self) -> str:
        """The failing records' messages."""
        return "; ".join(r.message for r in self.failed)


class UpdateRuns:
    """One run's update payloads and case pipelines over an anchor session (``nnc_session``)."""

    def __init__(self, session, plan: UpdatePlan) -> None:
        self.session = session
        self.plan = plan
        self._payloads: dict[tuple[str, str], bytes] = {}

    # -- inputs --------------------------------------------------------------------------------

    def states(self, pair: LineagePair) -> tuple[dict, dict]:
        """The base and target state dicts of a pair (weights loaded once per session)."""
        return (self.session.model(pair.anchor, pair.base).state_dict(),
                self.session.model(pair.anchor, pair.target).state_dict())

    def encode(self, pair: LineagePair, codec) -> bytes:
        """A fresh encoding of the pair's update with ``codec`` (what a sender would transmit)."""
        base, target = self.states(pair)
        preprocess = self.session.anchor(pair.anchor).preprocess_for(pair.target)
        return encode_update(codec, base, target, preprocess=preprocess)

    def payload(self, pair: LineagePair, point: UpdatePoint) -> bytes:
        """The payload of (pair, point), encoded once per session."""
        key = (pair.id, point.label)
        if key not in self._payloads:
            self._payloads[key] = self.encode(pair, point.make())
        return self._payloads[key]

    def full_bytes(self, pair: LineagePair) -> int:
        """Size of the whole target checkpoint (the ``full`` codec's payload), the reference of every ratio."""
        key = (pair.id, "::full")
        if key not in self._payloads:
            self._payloads[key] = self.encode(pair, make_codec("full"))
        return len(self._payloads[key])

    def rounds(self, pair: LineagePair) -> int:
        """Benchmark rounds for the pair's model (fewer for large models)."""
        base, _ = self.states(pair)
        return self.plan.benchmark.rounds_for(sum(t.numel() for t in base.values()))

    # -- comparing checkpoints -----------------------------------------------------------------

    def lineage_accuracy(self, anchor_name: str, checkpoint: str, index: int) -> CaseResult:
        """A checkpoint reproduces its documented top-1 (a smoke check on a smoke set)."""
        anchor = self.session.anchor(anchor_name)
        dataset = self.session.dataset(anchor)
        result = self.session.reference(anchor_name, checkpoint)
        task = result.task
        # the checkpoint's documented value of the task's metric (top1; an ASR checkpoint's wer)
        documented = getattr(anchor.checkpoint(checkpoint), task.metric, None)
        classifier = task.name == "classification"
        if classifier:
            hits = int(result.correct.sum())
            ci = wilson_interval(hits, len(dataset))
        else:
            hits, ci = None, task.interval(result.scores)
        details = {"anchor": anchor_name, "checkpoint": checkpoint, "index": index, "top1": result.metric,
                   "metric": task.metric, "ci95": list(ci), "documented": documented, "smoke": dataset.smoke,
                   "preprocess": anchor.preprocess_for(checkpoint).to_dict(), "dataset": dataset.name}
        subject = f"{anchor_name}/{checkpoint}"
        if dataset.smoke and documented is not None and classifier:
            rec = check_smoke_lineage_accuracy(subject, result.top1, documented, hits=hits, n=len(dataset), ci95=ci,
                                               dataset=dataset.name)
        else:
            rec = check_lineage_accuracy(subject, result.metric, documented, n=len(dataset), tolerance=anchor.tolerance,
                                         metric_label="top-1" if classifier else task.metric_label)
        rec.details.update(details)
        return CaseResult([rec])

    def comparison(self, pair: LineagePair) -> CaseResult:
        """A pair's measured change (INFO) and the documented change reproduced."""
        anchor = self.session.anchor(pair.anchor)
        dataset = self.session.dataset(anchor)
        base_result = self.session.reference(pair.anchor, pair.base)
        target_result = self.session.reference(pair.anchor, pair.target)
        task = target_result.task
        if task.name == "classification":
            comparison = compare_results(pair.base, pair.target, base_result, target_result, dataset.classes)
            info = comparison_record(pair.id, comparison, weight_changes(*self.states(pair)))
        else:  # the task's paired bootstrap on its metric (ASR: WER over utterances)
            comparison = task.paired(base_result.scores, target_result.scores)
            info = task_comparison_record(pair.id, pair.base, pair.target, comparison,
                                          weight_changes(*self.states(pair)))
        info.details.update({"anchor": pair.anchor, "kind": pair.kind, "smoke": dataset.smoke})
        out = CaseResult([info])
        doc_base = getattr(anchor.checkpoint(pair.base), task.metric, None)
        doc_target = getattr(anchor.checkpoint(pair.target), task.metric, None)
        if doc_base is None or doc_target is None:
            out.skip = f"{pair.id}: the manifest documents no {task.metric} for one of the checkpoints"
            return out
        out.records.append(check_documented_change(pair.id, comparison, doc_target - doc_base, n=len(dataset),
                                                   tolerance=anchor.tolerance, smoke=dataset.smoke))
        return out

    # -- coding updates ------------------------------------------------------------------------

    def sandboxed_payload(self, pair: LineagePair, point: UpdatePoint) -> tuple[bytes | None, CaseResult | None]:
        """The payload of (pair, point), or, when a proposal's sandboxed codec failed (raised, timed out, crashed),
        a case result whose ``updates.reconstruction`` record names the proposal, the call and the cause."""
        from ..sandbox import SandboxError

        try:
            return self.payload(pair, point), None
        except SandboxError as exc:
            return None, CaseResult([sandbox_failure(f"{pair.id}/{point.label}", point, exc)])

    def reconstruction(self, pair: LineagePair, point: UpdatePoint) -> CaseResult:
        """The payload decodes on its own base to the pinned state (bit-exact when lossless), and encoding is
        deterministic."""
        payload, failed = self.sandboxed_payload(pair, point)
        if failed is not None:
            return failed
        base, target = self.states(pair)
        subject = f"{pair.id}/{point.label}"
        rec, _ = check_reconstruction(subject, point.make(), base, target, payload)
        rec.details.update({"pair": pair.id, "codec": point.codec, "label": point.label, "params": dict(point.params),
                            "proposal": point.proposal})
        from ..sandbox import SandboxError

        try:
            again = self.encode(pair, point.make())
        except SandboxError as exc:
            return CaseResult([rec, sandbox_failure(subject, point, exc)])
        return CaseResult([rec, check_deterministic_encoding(subject, payload, again, proposal=point.proposal)])

    def accuracy(self, pair: LineagePair, point: UpdatePoint) -> CaseResult:
        """The model rebuilt from the payload (with the preprocessing it carries) meets the point's claim for the
        pair's kind against the target checkpoint (not gated on a smoke set)."""
        anchor = self.session.anchor(pair.anchor)
        dataset = self.session.dataset(anchor)
        target_result = self.session.reference(pair.anchor, pair.target)
        payload, failed = self.sandboxed_payload(pair, point)
        if failed is not None:
            return failed
        decoded = apply_update(self.states(pair)[0], payload)
        model = anchor.build_architecture()
        model.load_state_dict(decoded.state, strict=True)
        result = self.session.evaluator.evaluate(model.eval(), dataset, decoded.preprocess or anchor.preprocess)
        extra = {"pair": pair.id, "anchor": pair.anchor, "kind": pair.kind, "codec": point.codec,
                 "label": point.label, "params": dict(point.params), "top1": result.metric,
                 "target_top1": target_result.metric, "lossless": decoded.header.lossless, "smoke": dataset.smoke,
                 "proposal": point.proposal}
        # 20 images cannot support a non-inferiority margin of 1% or less
        claim = None if dataset.smoke else point.claim_for(pair.kind)
        rec = check_update_accuracy(f"{pair.id}/{point.label}", target_correct=target_result.scores,
                                    recon_correct=result.scores, claim=claim, update_bytes=len(payload),
                                    full_bytes=self.full_bytes(pair), agreement=_agreement(target_result, result),
                                    extra=extra, task=result.task)
        if dataset.smoke:
            rec.message = f"SMOKE (not gated on {len(dataset)} images): {rec.message}"
        return CaseResult([rec])

    def payload_safety(self, pair: LineagePair, point: UpdatePoint) -> CaseResult:
        """Damaged payloads and the right payload on the wrong base (the target) are refused."""
        payload, failed = self.sandboxed_payload(pair, point)
        if failed is not None:
            return failed
        base, wrong_base = self.states(pair)
        return CaseResult([check_payload_safety(f"{pair.id}/{point.label}", base, wrong_base, payload)])

    # -- NNC incremental coding along a whole lineage -------------------------------------------

    def nnc_lineage(self, anchor_name: str, point: UpdatePoint) -> CaseResult:
        """The lineage's checkpoints coded through NNC in order (base first), with the update tree kept (TCA on)
        and with a fresh tree per update: the incremental payloads decode in order, bit-exact to the encoder's
        reconstructions (update 2 without update 1 is refused), and both codings' sizes (INFO)."""
        from .lineage import code_lineage, summary

        checkpoints = [c.name for c in self.session.anchor(anchor_name).checkpoints]
        states = [self.session.model(anchor_name, c).state_dict() for c in checkpoints]
        config = point.make().config.replace(tca=True)
        _, incremental = code_lineage(states, config, keep_tree=True)
        _, independent = code_lineage(states, config, keep_tree=False)
        subject = f"{anchor_name}/{point.label}/lineage"
        extra = {"anchor": anchor_name, "label": point.label, "params": config.to_dict()}
        decode = check_nnc_lineage_decode(subject, states[0], incremental)
        decode.details.update(extra)
        return CaseResult([decode, nnc_lineage_size_record(subject, checkpoints,
                                                           summary(incremental, independent), extra=extra)])

    # -- artifact-only submissions -------------------------------------------------------------

    def submitted(self, artifact, pair: LineagePair) -> CaseResult:
        """A submitted payload: its sha256, its decoding by the reference decoders on the base it names, its
        size claim and its accuracy claim. Stops at the first of the file and decoding checks that fails."""
        a = artifact
        subject = f"{a.anchor}/{a.base}->{a.target}/{a.proposal}/{a.label}"
        path = Path(a.file.path)
        data = path.read_bytes()
        out = CaseResult([check_submitted_file(subject, path, data, a.file.sha256, proposal=a.proposal)])
        if out.failed:
            return out
        anchor = self.session.anchor(a.anchor)
        dataset = self.session.dataset(anchor)
        base = self.session.model(a.anchor, a.base).state_dict()
        target_result = self.session.reference(a.anchor, a.target)
        try:
            decoded = apply_update(base, data)
            model = anchor.build_architecture()
            model.load_state_dict(decoded.state, strict=True)
        except CodecUnavailable:
            raise
        except (ValueError, RuntimeError) as exc:
            out.records.append(check_submitted_decode(subject, path, proposal=a.proposal, base=a.base, error=exc))
            return out
        out.records.append(check_submitted_decode(subject, path, proposal=a.proposal, base=a.base,
                                                  codec=decoded.header.codec))
        if a.claimed_bytes is not None:
            out.records.append(check_size_claim(subject, len(data), a.claimed_bytes, proposal=a.proposal))
        result = self.session.evaluator.evaluate(model.eval(), dataset, decoded.preprocess or anchor.preprocess)
        out.records.append(check_update_accuracy(
            subject, target_correct=target_result.scores, recon_correct=result.scores, task=result.task,
            claim=None if dataset.smoke else a.claimed_tier, update_bytes=len(data), full_bytes=self.full_bytes(pair),
            agreement=_agreement(target_result, result),
            extra={"pair": pair.id, "anchor": a.anchor, "kind": pair.kind, "codec": decoded.header.codec,
                   "label": f"{a.proposal}-{a.label}", "params": decoded.header.config, "top1": result.metric,
                   "target_top1": target_result.metric, "lossless": decoded.header.lossless, "smoke": dataset.smoke,
                   "proposal": a.proposal}))
        return out


def sandbox_failure(subject: str, point: UpdatePoint, exc) -> CheckRecord:
    """The FAIL record of a case whose proposal codec failed in the sandbox (the proposal, the call, the cause)."""
    from ..records import gate

    return gate("updates.reconstruction", subject, False, measured=f"sandbox {exc.kind}", expected="decodes",
                criterion=CRITERION, message=str(exc),
                details={"proposal": point.proposal, "codec": point.codec, "label": point.label,
                         "sandbox": {"kind": exc.kind, "call": exc.call, "isolation": exc.isolation,
                                     "error_type": exc.error_type}})


def _agreement(target_result, result) -> float | None:
    """Top-1 agreement of two classifiers' logits; None for a task without logits (ASR)."""
    if result.task.name != "classification":
        return None
    return top1_agreement(target_result.logits, result.logits)
