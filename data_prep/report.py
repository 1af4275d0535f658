"""The table `mttt data shard` and `merge-manifests` print when they finish."""

from megatron_ttt.data import Manifest


def print_shard_report(manifest: Manifest, run: dict) -> None:
    totals = manifest.totals()
    rows = [("split", "shards", "samples", "tokens", "documents", "dropped tokens")]
    for split, t in totals.items():
        dropped = sum(task.dropped_tokens[split] for task in manifest.tasks)
        rows.append((split, t["shards"], t["samples"], t["tokens"], t["documents"], dropped))
    widths = [max(len(f"{row[i]:,}" if isinstance(row[i], int) else row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join((f"{v:,}" if isinstance(v, int) else v).rjust(w) for v, w in zip(row, widths)))
    tasks = manifest.tasks
    print(f"inputs: {len(tasks)} tasks, {sum(t.documents for t in tasks):,} documents; "
          f"skipped: {sum(t.empty for t in tasks):,} empty, {sum(t.skipped for t in tasks):,} malformed; "
          f"{sum(t.bad_utf8 for t in tasks):,} with invalid UTF-8 ({manifest.settings.bad_utf8}d); "
          f"{sum(t.truncated for t in tasks)} truncated files")
    if "tasks_run" in run:
        print(f"this run: {run['tasks_run']} tasks in {run['seconds']:.1f} s "
              f"({run['tokens_per_second']:,.0f} tokens/s), {run['tasks_reused']} already done")
    print(f"manifest: {run['manifest']}")
