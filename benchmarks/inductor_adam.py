"""Why a compiled AdamW step is slow on CPU: its bias corrections, recomputed per vector.

inductor's generated C++ for ``torch.compile(optimizer.step)`` computes Adam's bias
corrections (``1 - β1^step``, ``1 - β2^step``, a square root and divisions of the step
counter) inside the vectorized loop over the parameter, once per 8 entries, instead of
once per tensor (see the kernel with ``TORCH_LOGS=output_code``). Timed here on one
parameter tensor of each shipped MLP's first layer, interleaved:

* torch's AdamW step: foreach (torch's default), fused, ``torch.compile``-d, and compiled
  with the option :func:`eidetic_func.core.compiling.optimizer_compile_kwargs` gives compiled
  steps on CPU (``realize_opcount_threshold=1``: scalar subexpressions computed once);
* the same update written out and compiled, with the corrections computed from the step
  tensor inside the kernel (as torch's Adam does), and with them precomputed outside;
* every torch optimizer with scalar state on all parameters of the main job's MLP:
  eager (foreach), compiled, and compiled with the scalars realized.

Run: ``python -m benchmarks.inductor_adam [--repeats 50]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from eidetic_func.models import MLP

from eidetic_func.core.compiling import optimizer_compile_kwargs

from ._timing import (
    interleaved_samples,
    prepare_timing,
    print_spreads,
    ratio_spread,
    spread,
    timed_results,
    timing_parser,
    write_json,
)

SHAPES = {"400 x 784 (main job's MLP)": (400, 784), "1000 x 784 (MLP 2x1000)": (1000, 784)}
LR, BETA1, BETA2, EPS, DECAY = 1e-3, 0.9, 0.999, 1e-8, 1e-2


def _update_in_kernel(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, step: torch.Tensor
) -> None:
    m.lerp_(g, 1 - BETA1)
    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
    correction1 = 1 - BETA1 ** (step + 1)
    correction2 = 1 - BETA2 ** (step + 1)
    p.mul_(1 - LR * DECAY).sub_(m / (v.sqrt() / correction2.sqrt() + EPS) * (LR / correction1))


def _update_precomputed(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, scalars: torch.Tensor
) -> None:
    m.lerp_(g, 1 - BETA1)
    v.mul_(BETA2).addcmul_(g, g, value=1 - BETA2)
    p.mul_(1 - LR * DECAY).sub_(m / (v.sqrt() / scalars[1] + EPS) * scalars[0])


def _variants(shape: tuple[int, int]) -> dict[str, Callable[[], object]]:
    generator = torch.Generator().manual_seed(0)

    def optimizer(**kwargs: object) -> torch.optim.Optimizer:
        p = torch.nn.Parameter(torch.randn(shape, generator=generator))
        p.grad = torch.randn(shape, generator=generator)
        return torch.optim.AdamW([p], lr=LR, betas=(BETA1, BETA2), weight_decay=DECAY, **kwargs)

    foreach, fused = optimizer(foreach=True), optimizer(fused=True)
    compiled_step = torch.compile(optimizer().step)
    realized_step = torch.compile(optimizer().step, **optimizer_compile_kwargs(torch.device("cpu")))
    p, g, m = (torch.randn(shape, generator=generator) for _ in range(3))
    v = torch.rand(shape, generator=generator)
    step = torch.tensor(5.0)
    scalars = torch.stack([LR / (1 - BETA1 ** (step + 1)), (1 - BETA2 ** (step + 1)).sqrt()])
    in_kernel = torch.compile(_update_in_kernel)
    precomputed = torch.compile(_update_precomputed)
    return {
        "AdamW step, foreach": foreach.step,
        "AdamW step, fused": fused.step,
        "AdamW step, compiled": compiled_step,
        "AdamW step, compiled, scalars realized": realized_step,
        "update compiled, corrections in the kernel": lambda: in_kernel(p, g, m, v, step),
        "update compiled, corrections precomputed": lambda: precomputed(p, g, m, v, scalars),
    }


# torch optimizers (with their arguments) timed on the main job's MLP parameters
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, object]]] = {
    "SGD (momentum 0.9)": (torch.optim.SGD, {"lr": 1e-2, "momentum": 0.9}),
    "Adam": (torch.optim.Adam, {"lr": LR}),
    "AdamW": (torch.optim.AdamW, {"lr": LR, "weight_decay": DECAY}),
    "RMSprop": (torch.optim.RMSprop, {"lr": LR}),
    "Adagrad": (torch.optim.Adagrad, {"lr": LR}),
    "Adamax": (torch.optim.Adamax, {"lr": LR}),
    "NAdam": (torch.optim.NAdam, {"lr": LR}),
    "RAdam": (torch.optim.RAdam, {"lr": LR}),
}


def _optimizer_variants(
    cls: type[torch.optim.Optimizer], kwargs: dict[str, object]
) -> dict[str, Callable[[], object]]:
    def build() -> torch.optim.Optimizer:
        model = MLP(784, [10, 10], num_layers=2, width=400)
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        return cls(model.parameters(), **kwargs)  # type: ignore[arg-type]

    realized = optimizer_compile_kwargs(torch.device("cpu"))
    return {
        "eager (foreach)": build().step,
        "compiled": torch.compile(build().step),
        "compiled, scalars realized": torch.compile(build().step, **realized),
    }


def run(repeats: int) -> dict[str, object]:
    rows: list[dict[str, object]] = []
    for name, shape in SHAPES.items():
        torch._dynamo.reset()
        times = interleaved_samples(
            _variants(shape), repeats=repeats, warmup=3, device=torch.device("cpu")
        )
        us = {k: spread([1e6 * t for t in ts]) for k, ts in times.items()}
        ratios = {
            "compiled step / fused": ratio_spread(
                times["AdamW step, compiled"], times["AdamW step, fused"]
            ),
            "compiled with scalars realized / fused": ratio_spread(
                times["AdamW step, compiled, scalars realized"], times["AdamW step, fused"]
            ),
            "corrections in the kernel / precomputed": ratio_spread(
                times["update compiled, corrections in the kernel"],
                times["update compiled, corrections precomputed"],
            ),
        }
        rows.append({"shape": name, "us": us, "ratios": ratios})
        print_spreads(name, us, ratios)
    for name, (cls, kwargs) in OPTIMIZERS.items():
        torch._dynamo.reset()
        times = interleaved_samples(
            _optimizer_variants(cls, kwargs), repeats=repeats, warmup=3, device=torch.device("cpu")
        )
        us = {k: spread([1e6 * t for t in ts]) for k, ts in times.items()}
        ratios = {
            "realized / compiled": ratio_spread(
                times["compiled, scalars realized"], times["compiled"]
            ),
        }
        rows.append({"optimizer": name, "us": us, "ratios": ratios})
        print_spreads(f"{name}, the main job's MLP", us, ratios)
    return timed_results("inductor_adam", rows, repeats=repeats, device=torch.device("cpu"))


def main() -> None:
    args = timing_parser(__doc__, repeats=50).parse_args()
    prepare_timing(args.threads)
    payload = run(args.repeats)
    print(f"wrote {write_json('inductor-adam-cpu.json', payload)}")


if __name__ == "__main__":
    main()
