"""``onnxfi advise``: choose activation hardening per layer under a latency budget, write the recipe, verify it."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onnxfi.commands._common import add_model_args, load_from_args, resolve_model_arg, stderr, stdout
from onnxfi.commands._json import add_json_arg, json_command, write_json
from onnxfi.errors import OnnxfiError

__all__ = ["register", "run"]

HELP = """Choose, per activation layer, which hardening (ranger, clipact, relumax) to apply, and per weight
whether to check its range at run time (weight-clip), so that the predicted per-inference SDC rate is lowest
within a latency and a memory budget; write the recipe (`onnxfi harden --recipe` applies it), then verify: a
fresh weight-fault plan (seed + 1) on the original, the recipe and every hardening method applied to the whole
model, with intervals, and the recipe's paired difference to each method on the same faults. The prediction
attributes each weight fault to the first activation downstream of its weight and to the weight's own check,
and takes the outcome it had under the chosen protection (the lower one where both cover it); costs are the
measured latency and parameter bytes of one method at one unit (README: Hardening advisor).

examples:
  onnxfi advise digits_cnn --budget-latency 5 --budget-memory 2 -o digits.recipe.json
  onnxfi harden digits_cnn --recipe digits.recipe.json -o digits_hardened.onnx
  onnxfi advise model.onnx --data eval.npz --faults 2000 --methods ranger,clipact --json advise.json
  onnxfi advise digits_cnn --recipe digits.recipe.json --verify-faults 6000 --against ranger   verify it again
"""


def register(sub: Any) -> None:
    p = sub.add_parser("advise", help="choose per-layer hardening under a latency budget and verify it",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", metavar="DATA.npz", help="eval and calibration data (default: a zoo model's eval set)")
    p.add_argument("--budget-latency", type=float, default=5.0, metavar="PCT",
                   help="latency overhead allowed, percent of the original's median (default 5)")
    p.add_argument("--budget-memory", type=float, default=2.0, metavar="PCT",
                   help="parameter bytes allowed to grow, percent of the original's (default 2)")
    p.add_argument("--methods", default="ranger,clipact,relumax,weight-clip",
                   help="methods to choose from (default ranger,clipact,relumax,weight-clip)")
    p.add_argument("--against", default="all", metavar="M1,M2",
                   help="whole-model methods the verification compares the recipe with (default all)")
    p.add_argument("--faults", type=int, default=1000, help="weight faults per plan (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="plan seed; verification uses seed + 1 (default 0)")
    p.add_argument("--verify-faults", type=int, metavar="N",
                   help="weight faults in the verification plan (default: --faults)")
    p.add_argument("--verify-all", action="store_true",
                   help="run the verification campaign of every --against method, also those over the budget")
    p.add_argument("--repeat", type=int, default=200, help="interleaved latency rounds (default 200)")
    p.add_argument("--batch", type=int, default=64, help="samples per latency run (default 64)")
    p.add_argument("--no-verify", action="store_true", help="choose and write the recipe only")
    p.add_argument("--recipe", metavar="RECIPE.json",
                   help="verify this recipe (written by an earlier advise) instead of choosing one")
    p.add_argument("-o", "--out", metavar="RECIPE.json", help="write the recipe here")
    add_json_arg(p, "units, costs, the choice, the recipe and the verification")
    p.set_defaults(func=run)


def _pct(r: Any) -> str:
    return f"{100 * r.rate:.2f}% [{100 * r.lo:.2f}, {100 * r.hi:.2f}]"


@json_command
def run(args: argparse.Namespace) -> int:
    from onnxfi import advise
    from onnxfi.api import analyze
    from onnxfi.data import load_data
    from onnxfi.harden import METHODS, HardenOptions, harden, parse_methods
    from onnxfi.model import save_model
    from onnxfi.zoo import default_data

    if args.recipe and args.no_verify:
        raise OnnxfiError("--recipe verifies a recipe: it cannot go with --no-verify")
    methods = parse_methods(args.methods)
    other = [m for m in methods if m not in advise.CHOOSABLE]
    if other:
        raise OnnxfiError(f"advise chooses among {', '.join(advise.CHOOSABLE)}; not {other[0]}")
    against = list(METHODS) if args.against == "all" else parse_methods(args.against)
    if (args.budget_latency < 0 or args.budget_memory < 0 or args.faults < 10 or args.repeat < 5
            or args.batch < 1 or (args.verify_faults is not None and args.verify_faults < 10)):
        raise OnnxfiError("--budget-latency and --budget-memory must be >= 0, --faults and --verify-faults "
                          ">= 10, --repeat >= 5, --batch >= 1")
    model_path = resolve_model_arg(args.model)
    data_path = args.data or default_data(args.model)
    if data_path is None:
        raise OnnxfiError("advise needs eval data with labels or real inputs: give --data DATA.npz")
    loaded, _ = load_from_args(args)
    data = load_data(data_path, loaded.inputs())
    budget, mem_budget = args.budget_latency / 100.0, args.budget_memory / 100.0
    act_methods = [m for m in methods if m in advise.ACTIVATION_METHODS]
    all_units, all_weights = advise.activation_units(loaded.model), advise.weight_units(loaded.model)
    units = all_units if act_methods else []
    checkable = all_weights if advise.WEIGHT_METHOD in methods else []
    if not units and not checkable:
        raise OnnxfiError("nothing to harden in this model: no activation (ranger, clipact, relumax) and no float "
                          "initializer weight (weight-clip)")
    stdout.print(escape(f"{Path(model_path).name}: {len(units)} activation layers x {len(act_methods)} methods, "
                        f"{len(checkable)} weights to check; budget {args.budget_latency:g}% latency, "
                        f"{args.budget_memory:g}% memory; data {data.source} ({data.size} samples)"))
    doc: dict[str, Any] = {"schema": advise.ADVISE_SCHEMA, "model": str(model_path), "data": data.source,
                           "budget_latency": budget, "budget_memory": mem_budget, "methods": methods,
                           "units": units, "weights": checkable, "faults": args.faults, "seed": args.seed}
    p0 = max(1, advise.parameter_bytes(loaded.model))  # a model with no stored weight: growth is in bytes
    given = advise.Recipe(())
    if args.recipe:  # checked before any campaign runs
        given = advise.load_recipe(args.recipe)
        known = {*all_units, *all_weights}
        missing = [u for _, us in given.steps for u in us if u not in known]
        if missing:
            raise OnnxfiError(f"recipe {args.recipe}: {missing[0]!r} is not a layer or weight of this model "
                              f"({len(missing)} unknown)")
    with tempfile.TemporaryDirectory(prefix="onnxfi-advise-") as tmp, Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=stderr, transient=True) as prog:
        work = Path(tmp)
        whole = {m: harden(loaded.model, [m], data, HardenOptions()).model
                 for m in dict.fromkeys([*(() if args.recipe else methods), *against])}
        paths = {}
        for m, hm in whole.items():
            paths[m] = work / f"{m}.onnx"
            save_model(hm, paths[m])

        def campaigns(seed: int, others: dict[str, Path], what: str, faults: int) -> tuple[Any, dict[str, Any]]:
            task = prog.add_task(what, total=len(others))
            base, out = None, {}
            for key, path in others.items():
                # the original's campaign runs once: later models resume it (nothing left to run) and compare
                rep = analyze(model_path, data_path, faults=faults, seed=seed, design="proportional",
                              compare_with=str(path), db=work / f"{what.split()[0]}.db", resume=base is not None)
                base = base or rep
                out[key] = rep.compare
                prog.advance(task)
            return base, out

        feeds = data.batch(0, min(data.size, args.batch))
        predicted: float | None = None
        if args.recipe:  # verify a given recipe; nothing is chosen
            recipe = given
            doc["recipe"] = recipe.to_dict(str(model_path))
        else:
            base, under = campaigns(args.seed, {m: paths[m] for m in methods}, "choice campaigns", args.faults)
            find = advise.downstream_units(loaded.model, units)
            attributed: dict[str, list[int]] = {}
            in_weight: dict[str, list[int]] = {}
            for r in base.rows:
                u = find(str(r["site"]))
                if u is not None:
                    attributed.setdefault(u, []).append(int(r["id"]))
                if str(r["site"]) in checkable:
                    in_weight.setdefault(str(r["site"]), []).append(int(r["id"]))
            sdc = {int(r["id"]): float(r.get("images_changed") or 0.0) for r in base.rows}
            sdc_under = {m: {int(r["id"]): float(r.get("images_changed") or 0.0) for r in rep.rows}
                         for m, rep in under.items()}
            wm = advise.WEIGHT_METHOD
            # only the weights whose check changed some fault's outcome are worth a latency measurement
            weights = {w: fs for w, fs in in_weight.items()
                       if any(sdc_under[wm][f] < max([sdc[f], *(sdc_under[m][f] for m in act_methods)]) for f in fs)}
            # costs: one method at one unit, and each method on the whole model, in one interleaved loop
            task = prog.add_task("latency (per unit)", total=1)
            single = {(u, m): harden(loaded.model, [m], data, HardenOptions(layers=advise.layers_regex([u]))).model
                      for u in units for m in act_methods}
            single.update({(w, wm): harden(loaded.model, [wm], data, HardenOptions(layers=advise.layers_regex([w]))).model
                           for w in weights})
            timed = advise.latencies({"original": loaded.model, **{f"{u}\t{m}": sm for (u, m), sm in single.items()},
                                      **{f"whole\t{m}": wm_ for m, wm_ in whole.items()}}, feeds, args.repeat)
            prog.advance(task)
            t0 = timed["original"]
            cost = {key: max(0.0, timed[f"{key[0]}\t{key[1]}"] / t0 - 1) for key in single}
            memory = {key: max(0.0, advise.parameter_bytes(sm) / p0 - 1) for key, sm in single.items()}

            def pick(allowed: float) -> Any:
                return advise.choose(units, act_methods, attributed, sdc, sdc_under, cost, allowed,
                                     weights=weights, memory=memory, memory_budget=mem_budget)

            # per-unit costs need not add up: measure the chosen recipe itself; while it is over the budget, choose
            # again within a budget lowered by what the sum missed (at most 5 rounds; the last fit is kept)
            task = prog.add_task("latency (the recipe)", total=None)
            rounds: list[dict[str, Any]] = []
            allowed = budget
            choice = pick(allowed)
            for _ in range(5):
                if not choice.assignment:
                    break
                trial = advise.apply_recipe(loaded.model, choice.recipe(), data, HardenOptions()).model
                t = advise.latencies({"original": loaded.model, "recipe": trial}, feeds, args.repeat)
                over = t["recipe"] / t["original"] - 1
                rounds.append({"allowed": allowed, "assignment": dict(choice.assignment), "summed_cost": choice.cost,
                               "measured_overhead": over})
                if over <= budget:
                    break
                allowed -= max(over - choice.cost, 0.1 * budget)
                choice = pick(max(allowed, 0.0))
            else:
                choice = pick(0.0)  # nothing fit: free only
            prog.update(task, total=1, completed=1)
            recipe = choice.recipe()
            doc["choice"] = {
                "assignment": choice.assignment, "predicted_per_inference": choice.predicted,
                "baseline_per_inference": choice.baseline, "cost": choice.cost, "memory": choice.memory,
                "exact": choice.exact, "combinations": choice.combos, "rounds": rounds,
                "units": [{"unit": u, "faults": len(attributed.get(u, [])),
                           **{m: {"cost": cost[(u, m)], "memory": memory[(u, m)], "gain": choice.benefit[(u, m)]}
                              for m in act_methods}} for u in units],
                "weights": [{"unit": w, "faults": len(fs), wm: {"cost": cost[(w, wm)], "memory": memory[(w, wm)],
                                                                "gain": choice.benefit[(w, wm)]}}
                            for w, fs in weights.items()],
            }
            doc["recipe"] = recipe.to_dict(str(model_path))
            if args.out:
                Path(args.out).write_text(json.dumps(doc["recipe"], indent=2) + "\n", encoding="utf-8")
            _print_choice(units, act_methods, attributed, weights, cost, memory, choice, len(sdc))
            for r in rounds[:-1]:
                stdout.print(escape(f"chose again: {len(r['assignment'])} step(s) summing {100 * r['summed_cost']:+.1f}% "
                                    f"measured {100 * r['measured_overhead']:+.1f}% latency together, over the budget"))
            predicted = choice.predicted
        if not args.no_verify:
            hardened = advise.apply_recipe(loaded.model, recipe, data, HardenOptions()).model
            rpath = work / "recipe.onnx"
            save_model(hardened, rpath)
            lat = advise.latencies({"original": loaded.model, "recipe": hardened,
                                    **{m: whole[m] for m in against}}, feeds, args.repeat)
            grown = {key: advise.parameter_bytes(hardened if key == "recipe" else whole[key]) / p0 - 1
                     for key in ["recipe", *against]}
            within = {key: lat[key] / lat["original"] - 1 <= budget and grown[key] <= mem_budget for key in grown}
            # the methods over the budget are not what the recipe competes with: their campaigns only on request
            run_on = ["recipe", *[m for m in against if within[m] or args.verify_all]]
            vbase, vunder = campaigns(args.seed + 1, {k: rpath if k == "recipe" else paths[k] for k in run_on},
                                      "verification campaigns", args.verify_faults or args.faults)
            per_fault = {key: {int(r["id"]): float(r.get("images_changed") or 0.0) for r in rep.rows}
                         for key, rep in vunder.items()}
            rows = []
            ver: dict[str, Any] = {"seed": args.seed + 1, "original": _rates(vbase), "latency_ms": lat}
            for key in ["recipe", *against]:
                entry: dict[str, Any] = {"overhead": lat[key] / lat["original"] - 1, "memory": grown[key],
                                         "within_budget": within[key]}
                if key in vunder:
                    entry.update(_rates(vunder[key]))
                if key != "recipe" and key in vunder:
                    d, lo, hi = advise.paired_difference(per_fault["recipe"], per_fault[key],
                                                         vbase.plan.population, vbase.confidence)
                    entry["recipe_minus_this"] = {"rate": d, "lo": lo, "hi": hi, "method": "paired-stratified"}
                ver[key] = entry
                rows.append((key, entry, vunder.get(key)))
            doc["verification"] = ver
            _print_verification(vbase, rows, predicted, lat["original"])
    if args.out:
        stdout.print(escape(f"recipe: {args.out} (apply: onnxfi harden {args.model} --recipe {args.out} -o OUT.onnx)"))
    if args.json:
        write_json(args.json, doc)
    return 0


def _rates(rep: Any) -> dict[str, Any]:
    per, sdc = rep.per_inference, rep.rate("sdc1")
    return {"per_inference": {"rate": per.rate, "lo": per.lo, "hi": per.hi, "method": per.method},
            "sdc1": {"k": sdc.k, "n": sdc.n, "rate": sdc.rate, "lo": sdc.lo, "hi": sdc.hi, "method": sdc.method}}


def _print_choice(units: list[str], methods: list[str], attributed: dict[str, list[int]],
                  weights: dict[str, list[int]], cost: dict[tuple[str, str], float],
                  memory: dict[tuple[str, str], float], choice: Any, n: int) -> None:
    from onnxfi.advise import WEIGHT_METHOD

    if units:
        t = Table(title="Per activation layer: faults attributed, latency cost and predicted per-inference SDC "
                        "reduction of each method; * = chosen", title_justify="left", show_edge=False,
                  header_style="bold")
        t.add_column("activation")
        t.add_column("faults", justify="right")
        for m in methods:
            t.add_column(m, justify="right")
        for u in units:
            cells = []
            for m in methods:
                mark = " *" if choice.assignment.get(u) == m else ""
                cells.append(f"{100 * cost[(u, m)]:+.1f}% / -{100 * choice.benefit[(u, m)]:.3f}{mark}")
            t.add_row(escape(u), str(len(attributed.get(u, []))), *cells)
        stdout.print(t)
    if weights:
        t = Table(title=f"Per weight ({WEIGHT_METHOD}, the weights whose check changed an outcome): faults, "
                        "latency and memory cost, predicted reduction alone; * = chosen", title_justify="left",
                  show_edge=False, header_style="bold")
        for col in ("weight", "faults", "latency", "memory", "reduction"):
            t.add_column(col, justify="left" if col == "weight" else "right")
        for w, fs in weights.items():
            mark = " *" if w in choice.assignment else ""
            t.add_row(escape(w), str(len(fs)), f"{100 * cost[(w, WEIGHT_METHOD)]:+.1f}%",
                      f"{100 * memory[(w, WEIGHT_METHOD)]:+.3f}%",
                      f"-{100 * choice.benefit[(w, WEIGHT_METHOD)]:.3f}{mark}")
        stdout.print(t)
    how = f"exact over {choice.combos:,} activation assignments" if choice.exact else \
        f"greedy in part; {choice.combos:,} activation assignments"
    stdout.print(f"predicted per-inference SDC: {100 * choice.baseline:.3f}% -> {100 * choice.predicted:.3f}% "
                 f"at {100 * choice.cost:+.1f}% latency, {100 * choice.memory:+.3f}% memory ({how}; {n:,} faults)")


def _print_verification(base: Any, rows: list[tuple[str, dict[str, Any], Any | None]], predicted: float | None,
                        t0: float) -> None:
    t = Table(title=f"Verification on a fresh plan ({base.plan.population:,} faults in the space, "
                    f"{len(base.rows):,} drawn; {100 * base.confidence:g}% intervals); original {t0:.3f} ms median",
              title_justify="left", show_edge=False, header_style="bold")
    for col in ("model", "latency", "memory", "within budget", "per-inference SDC [CI]", "recipe - this, paired [CI]",
                "SDC-1 per fault [CI]"):
        t.add_column(col)
    t.add_row("original", "-", "-", "-", _pct(base.per_inference), "", _pct(base.rate("sdc1")))
    for key, entry, rep in rows:
        name = "advised recipe" if key == "recipe" else f"{key} (whole model)"
        diff = entry.get("recipe_minus_this")
        paired = "" if diff is None else \
            f"{100 * diff['rate']:+.2f} [{100 * diff['lo']:+.2f}, {100 * diff['hi']:+.2f}]" + \
            (" lower" if diff["hi"] < 0 else " higher" if diff["lo"] > 0 else "")
        t.add_row(escape(name), f"{100 * entry['overhead']:+.1f}%", f"{100 * entry['memory']:+.2f}%",
                  "yes" if entry["within_budget"] else "no",
                  *((_pct(rep.per_inference), paired, _pct(rep.rate("sdc1"))) if rep is not None
                    else ("over the budget: not run", "", "")))
    stdout.print(t)
    recipe = next(rep for key, _, rep in rows if key == "recipe")
    if recipe is not None:
        said = "" if predicted is None else f"predicted {100 * predicted:.3f}%, "
        stdout.print(f"advised recipe: {said}measured {_pct(recipe.per_inference)} per-inference SDC on faults "
                     "the choice did not see")
