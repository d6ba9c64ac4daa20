"""Text in, text out: prompts (optionally through the chat template) -> generated texts and exec info.

``ExecInfo`` is what a run reports, as the reference library does: the prompts, the batch
size, the generated texts and ids (new tokens only, in prompt order) and ``perf_metrics``:

- ``prefill_time_s``: time to first token, from the first prefill call to the first token
  (tokenization excluded);
- ``decode_time_s``: from the first token to the last;
- ``decode_throughput_tok_s``: the tokens after the first of each sequence, summed, / decode_time_s;
- ``total_throughput_tok_s``: every generated token / e2e_time_s;
- ``e2e_time_s``: from the first prefill call to the last token.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from runtime.sampling import SamplingParams
from runtime.scheduler import Request, Scheduler
from runtime.session import Session

EXEC_INFO = "exec_info.json"


@dataclass
class ExecInfo:
    prompts: list[str]
    batch_size: int
    generated_texts: list[str]
    generated_ids: list[list[int]]
    perf_metrics: dict[str, float]
    prompt_lengths: list[int] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    full_batch_size: int | None = None
    # speculative decoding: num_speculative_tokens, prefill_seq_len, ctx_len, draft_model_name,
    # target_model_name, accepted_per_step (written at the top level)
    speculative: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(out.pop("speculative") or {})
        return out

    def write(self, folder: Path) -> Path:
        path = Path(folder) / EXEC_INFO
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n")
        return path

    def __str__(self) -> str:
        m = self.perf_metrics
        lines = []
        for i, (prompt, text) in enumerate(zip(self.prompts, self.generated_texts)):
            lines += [f"=== prompt {i} ({self.prompt_lengths[i]} tokens) ===", prompt,
                      f"--- completion ({len(self.generated_ids[i])} tokens, {self.finish_reasons[i]}) ---", text]
        lines += ["===", f"TTFT (prefill) {m['prefill_time_s'] * 1000:.1f} ms | decode {m['decode_throughput_tok_s']:.1f} tok/s | "
                  f"total {m['total_throughput_tok_s']:.1f} tok/s | e2e {m['e2e_time_s']:.2f} s"]
        if self.speculative:
            lines.append(f"speculative ({self.speculative['scheme']}, K={self.speculative['num_speculative_tokens']}): "
                         f"{m['mean_num_accepted_tokens']:.2f} tokens per target step over {m['decode_iterations']:.0f} steps | "
                         f"target {m['decode_target_time_s']:.2f} s, draft {m['decode_draft_time_s']:.2f} s")
        return "\n".join(lines)


def eos_ids(tokenizer: Any, package_dir: str | Path) -> list[int]:
    """End-of-sequence ids: the model's generation_config.json (which may list several), else the tokenizer's."""
    config = Path(package_dir) / "tokenizer" / "generation_config.json"
    ids: Any = None
    if config.is_file():
        ids = json.loads(config.read_text()).get("eos_token_id")
    if ids is None:
        ids = tokenizer.eos_token_id
    return [int(i) for i in (ids if isinstance(ids, (list, tuple)) else [ids]) if i is not None]


def encode(tokenizer: Any, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    if not chat:
        return [list(tokenizer(p)["input_ids"]) for p in prompts]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("chat: true is not allowed for this model; allowed: false (its tokenizer has no chat template)")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    return [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


class Streamer:
    """Prints each sequence's text as its tokens come (a single prompt inline; several, one line per piece)."""

    def __init__(self, tokenizer: Any, count: int, out: Any = sys.stdout):
        self.tokenizer, self.count, self.out = tokenizer, count, out
        self.ids: dict[int, list[int]] = {}
        self.printed: dict[int, str] = {}

    def __call__(self, index: int, token: int) -> None:
        ids = self.ids.setdefault(index, [])
        ids.append(token)
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return
        new = text[len(self.printed.get(index, "")):]
        self.printed[index] = text
        if new:
            print(new if self.count == 1 else f"[{index}] {new!r}", end="" if self.count == 1 else "\n",
                  file=self.out, flush=True)


def generate_texts(session: Session, tokenizer: Any, package_dir: str | Path, prompts: Sequence[str],
                   generation_len: int, chat: bool = False, sampling: SamplingParams = SamplingParams(),
                   on_token: Callable[[int, int], None] | None = None, proposer: Any = None,
                   num_speculative_tokens: Any = None, target_model_name: str | None = None,
                   adapter: int = 0, key: str = "prompts") -> ExecInfo:
    """Tokenize, schedule, detokenize: the ExecInfo of one run over every prompt.

    ``proposer`` (runtime.speculative): speculative decoding with up to ``num_speculative_tokens``
    (K, or a list: its largest) proposals a step. ``adapter``: the LoRA slot of every prompt.
    A prompt that cannot fit (told by its bytes before tokenization) is a ValueError naming ``key``."""
    from runtime.tokenizer import check_texts

    sampling.check()
    check_texts(tokenizer, prompts, session.program.ctx_len - 1, key)
    ids = encode(tokenizer, prompts, chat)
    if proposer is None:
        scheduler = Scheduler(session, eos_ids(tokenizer, package_dir), sampling, on_token)
    else:
        from runtime.speculative import SpeculativeScheduler

        ks = num_speculative_tokens if isinstance(num_speculative_tokens, (list, tuple)) else [num_speculative_tokens]
        scheduler = SpeculativeScheduler(session, proposer, eos_ids(tokenizer, package_dir), sampling, on_token,
                                         None if ks == [None] else max(ks))
    requests = [Request(i, p, generation_len, adapter) for i, p in enumerate(ids)]
    run = scheduler.run(requests)
    texts = [tokenizer.decode(r.ids, skip_special_tokens=True) for r in run.results]
    speculative = None
    if proposer is not None:
        program = session.program
        speculative = {"scheme": proposer.name, "num_speculative_tokens": num_speculative_tokens or scheduler.k,
                       "prefill_seq_len": scheduler.prefill.seq_len, "ctx_len": program.ctx_len,
                       "draft_model_name": proposer.draft_model_name, "target_model_name": target_model_name,
                       "accepted_per_step": [scheduler.accepted[r.index] for r in requests]}
    return ExecInfo(
        prompts=list(prompts), batch_size=scheduler.batch_size, generated_texts=texts,
        generated_ids=[r.ids for r in run.results], perf_metrics=run.perf_metrics(),
        prompt_lengths=[len(p) for p in ids], finish_reasons=[r.finish_reason or "length" for r in run.results],
        full_batch_size=scheduler.batch_size if scheduler.continuous else None, speculative=speculative)
