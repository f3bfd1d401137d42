"""Score recall tasks (:mod:`infllm_cli.recall`) under a memory configuration, with retrieval diagnostics.

For every trial the context streams into a :class:`~infllm_cli.runner.Runner`; the answer is then scored
teacher-forced (the prompt is read as a question, then each true answer token is fed in turn, exactly as
generation would feed it): per answer token, whether the argmax is right, and its NLL. So even tiny models
can be measured, and the reads are identical to those of ``infllm ask``.

Retrieval diagnostic (``infllm`` attention only): while the answer positions are computed (the chunk
holding the prompt's last token, then every answer token), a probe looks at every layer's selection:
``hit`` is the fraction of (layer, KV head, step) whose selection held every block of the evidence (the
answer's tokens in the context), ``rank`` the median over (layer, step) of the best rank any KV head gave
an evidence block (0 = top). ``oracle`` variants pin the blocks of the planted fact into every layer's
selection for the prompt and the answer: the ceiling of the selection for that configuration.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .config import MemoryConfig, reading_config
from .memory.cache import ContextMemory
from .models import LoadedModel
from .recall import Filler, RecallSample, bos_ids, make_sample, tokenizer_encoder
from .runner import Runner


@dataclass(frozen=True)
class Variant:
    """One way of reading: attention mode, memory knobs, and whether the evidence is forced (``oracle``: the
    asked fact's blocks pinned; ``all_facts``: every planted fact's blocks pinned, the asked one and the
    distractors, i.e. the ceiling of a selection that finds the facts but cannot tell them apart)."""

    name: str
    attention: str
    memory: MemoryConfig
    oracle: bool = False
    all_facts: bool = False


@dataclass
class TrialResult:
    task: str
    length: int
    depth: float
    trial: int
    variant: str
    token_accuracy: float
    exact: bool
    nll: float
    hit: float | None = None
    rank: float | None = None
    layer_hit: list[float] = field(default_factory=list)


class SelectionProbe:
    """Records, per layer, whether the selections at the answer positions held the evidence blocks."""

    def __init__(self, evidence_blocks: list[int], first_position: int, n_layers: int) -> None:
        self.evidence = evidence_blocks
        self.first_position = first_position
        self.hits: list[list[float]] = [[] for _ in range(n_layers)]
        self.ranks: list[int] = []

    def record(self, layer_index: int, layer: Any, q_mem: torch.Tensor, idx: torch.Tensor) -> None:
        if layer.question_scores is not None:  # the question-ranking pass, not an answer position
            return
        if layer.n_seen + q_mem.shape[1] <= self.first_position:
            return
        evidence = [b for b in self.evidence if b < layer.store.n_blocks]
        if not evidence:
            return
        rows = [set(r) for r in idx.tolist()]
        self.hits[layer_index].append(sum(all(b in r for b in evidence) for r in rows) / len(rows))
        scores = layer.selector.scores(q_mem, layer.store).float()  # [rows, n]
        ranks = (scores[:, None, :] > scores[:, evidence, None]).sum(dim=-1)  # [rows, evidence]
        self.ranks.append(int(ranks.min()))

    def attach(self, memory: ContextMemory) -> None:
        for i, m in enumerate(memory.memories):
            m.probe = lambda layer, q, idx, i=i: self.record(i, layer, q, idx)

    @staticmethod
    def detach(memory: ContextMemory) -> None:
        for m in memory.memories:
            m.probe = None

    def summary(self) -> tuple[float | None, float | None, list[float]]:
        per_layer = [sum(h) / len(h) if h else float("nan") for h in self.hits]
        steps = [x for h in self.hits for x in h]
        hit = sum(steps) / len(steps) if steps else None
        rank = float(statistics.median(self.ranks)) if self.ranks else None
        return hit, rank, per_layer


def answer_scores(runner: Runner, sample: RecallSample, oracle: bool, probe: SelectionProbe | None,
                  all_facts: bool = False) -> tuple[float, bool, float]:
    """Read the prompt, then score the answer teacher-forced: (token accuracy, exact match, mean NLL). With
    ``oracle`` the blocks of the asked fact are pinned instead of the question's; with ``all_facts`` those of
    the distractor facts too."""
    cache = runner.cache
    memory = cache if isinstance(cache, ContextMemory) else None
    if probe is not None and memory is not None:
        probe.attach(memory)
    try:
        forced = None
        if (oracle or all_facts) and memory is not None:
            spans = sample.needle + (sample.distractors if all_facts else [])
            forced = sorted({b for s, e in spans for b in memory.blocks_of(s, e)})
        runner.read_question(sample.prompt, forced)
        logits = [runner.last_logits]
        for tok in sample.answer[:-1]:
            logits.append(runner.decode_one_token(tok))
    finally:
        if probe is not None and memory is not None:
            probe.detach(memory)
    stacked = torch.stack([lg.float() for lg in logits])
    target = torch.tensor(sample.answer, device=stacked.device)
    correct = stacked.argmax(dim=-1) == target
    nll = torch.nn.functional.cross_entropy(stacked, target).item()
    return correct.float().mean().item(), bool(correct.all()), nll


def evidence_blocks(memory: ContextMemory, sample: RecallSample) -> list[int]:
    return sorted({b for s, e in sample.evidence for b in memory.blocks_of(s, e)})


def run_recall(
    loaded: LoadedModel,
    variants: Sequence[Variant],
    tasks: Sequence[str],
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int,
    *,
    seed: int = 0,
    filler: str = "grass",
    key_format: str = "digits",
    n_keys: int = 4,
    backend: str = "auto",
    on_trial: Callable[[TrialResult], None] | None = None,
) -> list[TrialResult]:
    """Every task x length x depth x trial, each variant on the same sample (same seed, same text).

    Variants that differ only in ``oracle`` / ``all_facts`` or in the answer-time knobs (:data:`ANSWER_KNOBS`) share one read
    of the context, answered with each variant's knobs (:meth:`ContextMemory.answer_config`).
    """
    encode = tokenizer_encoder(loaded.tokenizer)
    bos = bos_ids(loaded.tokenizer)
    fill = Filler(filler, encode, seed=seed)
    groups: dict[tuple[str, MemoryConfig], list[Variant]] = {}
    for v in variants:
        groups.setdefault((v.attention, reading_config(v.memory)), []).append(v)
    runners = {key: Runner(loaded, memory, attention=attention, backend=backend)
               for key in groups for attention, memory in [key]}
    results: list[TrialResult] = []
    for task in tasks:
        for length in lengths:
            for depth in depths:
                for trial in range(trials):
                    rng = random.Random(f"{seed}/{task}/{length}/{depth}/{trial}")
                    sample = make_sample(task, length, depth, encode, fill, rng, bos=bos, key_format=key_format,
                                         n_keys=n_keys)
                    for key, group in groups.items():
                        runner = runners[key]
                        runner.reset()
                        runner.feed(sample.context)
                        after_context = runner.snapshot()
                        for v in group:
                            runner.restore(after_context)
                            memory = runner.cache if isinstance(runner.cache, ContextMemory) else None
                            probe = None
                            if memory is not None and v.attention == "infllm":
                                probe = SelectionProbe(evidence_blocks(memory, sample), len(sample.context) + len(sample.prompt) - 1,
                                                       len(memory.memories))
                            with memory.answer_config(v.memory) if memory is not None else contextlib.nullcontext():
                                acc, exact, nll = answer_scores(runner, sample, v.oracle, probe, v.all_facts)
                            hit, rank, per_layer = probe.summary() if probe else (None, None, [])
                            r = TrialResult(task, length, depth, trial, v.name, acc, exact, nll, hit, rank, per_layer)
                            results.append(r)
                            if on_trial is not None:
                                on_trial(r)
    return results


def summarize(results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """One row per task x length x depth x variant: means over trials (``depth`` None = all depths)."""
    rows: dict[tuple, list[TrialResult]] = {}
    for r in results:
        rows.setdefault((r.task, r.length, r.depth, r.variant), []).append(r)
    out = []
    for (task, length, depth, variant), rs in rows.items():
        hits = [r.hit for r in rs if r.hit is not None]
        ranks = [r.rank for r in rs if r.rank is not None]
        layers = [r.layer_hit for r in rs if r.layer_hit]
        out.append({
            "task": task, "length": length, "depth": depth, "variant": variant, "trials": len(rs),
            "token_accuracy": sum(r.token_accuracy for r in rs) / len(rs),
            "exact_match": sum(r.exact for r in rs) / len(rs),
            "nll": sum(r.nll for r in rs) / len(rs),
            "evidence_hit": sum(hits) / len(hits) if hits else None,
            "evidence_rank": statistics.median(ranks) if ranks else None,
            "layer_hit": [_nanmean([lh[i] for lh in layers]) for i in range(len(layers[0]))] if layers else [],
        })
    return out


def _nanmean(xs: list[float]) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


def result_dicts(results: Sequence[TrialResult]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(r) for r in results]
