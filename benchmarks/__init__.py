"""minigpt's benchmarks: `python -m minigpt bench [WORKLOAD ...]` (or `python -m benchmarks` from the checkout).

Each workload measures variants of one job against an in-run reference and prints a markdown table
(docs/bench.md says what each column means; benchmarks/results.md keeps dated results). A workload is one
module here with ABOUT (one line), NEEDS (which ceilings it is compared with: "matmul", "bandwidth") and
run(settings, ceilings) -> rows, optionally check(settings) to refuse bad settings before anything runs;
adding one is that file plus its line below. Benchmarks are not tests: they assert nothing and take minutes.
"""

WORKLOADS = {  # name -> module, in the order `bench` with no names runs them
    "train-baby": "benchmarks.train_baby",
    "train-gpt2": "benchmarks.train_gpt2",
    "generate-gpt2": "benchmarks.generate_gpt2",
    "speedrun-cpu": "benchmarks.speedrun_cpu",
    "prepare": "benchmarks.prepare",
    "plan": "benchmarks.plan",
}
