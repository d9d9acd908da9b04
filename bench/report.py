"""The benchmark's table (printed, and as Markdown for the README), its JSON and its
picture: time-to-ring against node size, incremental against the full-reload baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _ms(value: float) -> str:
    return f"{value * 1000:.0f} ms"


def table(results: dict[str, Any]) -> str:
    rows = [
        "| node | moved number rings: incremental, median (p95, max) | baseline (full reload),"
        " median (p95) | ratio | outbound over the moved trunk, median (max) |",
        "|---|---|---|---|---|",
    ]
    for s in results["sizes"]:
        r = s["results"]
        inc, base = r["incremental"]["ring_s"], r["baseline"]["ring_s"]
        out = r["incremental"].get("outbound_s")
        outbound = f"{out['median']:.2f} s ({out['max']:.2f} s)" if out else "-"
        rows.append(
            f"| {s['pbxes']} PBXs x {s['phones']} phones"
            f" | {_ms(inc['median'])} ({_ms(inc['p95'])}, {_ms(inc['max'])})"
            f" | {_ms(base['median'])} ({_ms(base['p95'])})"
            f" | {r['ratio']:.0f}x | {outbound} |"
        )
    for s in results["sizes"]:
        b2b = s["results"].get("back_to_back")
        if b2b:
            ring = b2b["ring_s"]
            rows += [
                "",
                f"{s['pbxes']} x {s['phones']}, {ring['n']} moves back to back (not waiting"
                f" for each one's res_pjsip reload): rings after {_ms(ring['median'])} median,"
                f" {_ms(ring['p95'])} p95, {_ms(ring['max'])} max.",
            ]
    rows += [
        "",
        "| node | burst: all routed | res_pjsip / pbx_config reloads | render one PBX"
        " | API req/s (p99) | service RSS | Asterisk RSS after build (after moves)"
        " | build (5xx) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in results["sizes"]:
        r = s["results"]
        b, api = r["burst"], r["api"]
        after = r.get("asterisk_rss_mb_after_moves")
        rows.append(
            f"| {s['pbxes']} x {s['phones']}"
            f" | {b['count']} in {b['all_routed_s']:.2f} s"
            f" | {b['res_pjsip_reloads']:.0f} / {b['pbx_config_reloads']:.0f}"
            f" | {r['render_ms']:.1f} ms"
            f" | {api['requests_per_s']:.0f} ({api['p99_ms']:.0f} ms)"
            f" | {r['service_rss_mb']:.0f} MB"
            f" | {r['asterisk_rss_mb_after_build']:.0f} MB"
            + (f" ({after:.0f} MB after {r['rss_moves']} moves)" if after else "")
            + f" | {r['build']['seconds']:.0f} s ({r['build']['http_5xx']}) |"
        )
    return "\n".join(rows)


def picture(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = results["sizes"]
    endpoints = [s["pbxes"] * s["phones"] for s in sizes]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for key, label, style in (("incremental", "incremental apply", "o-"),
                              ("baseline", "full reload (baseline)", "s--")):  # fmt: skip
        med = [s["results"][key]["ring_s"]["median"] * 1000 for s in sizes]
        p95 = [s["results"][key]["ring_s"]["p95"] * 1000 for s in sizes]
        ax.plot(endpoints, med, style, label=f"{label}, median")
        ax.fill_between(endpoints, med, p95, alpha=0.15)
    ax.axhline(250, color="grey", linewidth=0.8, linestyle=":")
    ax.text(endpoints[0], 270, "target 250 ms", color="grey", fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("phones on the node (PBXs x phones)")
    ax.set_ylabel("confirmation to ringing phone (ms)")
    ax.set_xticks(endpoints, [f"{s['pbxes']}x{s['phones']}" for s in sizes])
    ax.set_title(f"A moved number rings in its new PBX ({results['date'][:10]})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def into_readme(readme: Path | None, part: str, markdown: str) -> None:
    """Put a part's table between its markers in the README (`<!-- {part}:start -->`
    and `<!-- {part}:end -->`), if it has them."""
    start, end = f"<!-- {part}:start -->", f"<!-- {part}:end -->"
    if readme is None or start not in readme.read_text():
        return
    before, rest = readme.read_text().split(start, 1)
    after = rest.split(end, 1)[1]
    readme.write_text(f"{before}{start}\n{markdown}{end}{after}")


def report(results: dict[str, Any], folder: Path, readme: Path | None = None) -> None:
    """Write the JSON, the Markdown table and the picture; with `readme`, put the table
    between its bench markers too."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = table(results)
    markdown = f"Measured {results['date'][:10]} on {results['machine']}.\n\n{text}\n"
    (folder / "results.md").write_text(markdown)
    into_readme(readme, "bench", markdown)
    picture(results, folder / "time-to-ring.png")
    print()
    print(text)
    print(f"\nwritten: {folder / 'results.json'}, {folder / 'results.md'},"
          f" {folder / 'time-to-ring.png'}")  # fmt: skip


def rows_table(header: tuple[str, ...], rows: list[tuple[str, str]]) -> str:
    """A Markdown table: the header, then one row per (name, value)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| {name} | {value} |" for name, value in rows]
    return "\n".join(lines)


def report_part(
    part: str, results: dict[str, Any], text: str, folder: Path, readme: Path | None,
    about: str = "",
) -> None:  # fmt: skip
    """A part's results: bench/<part>-results.json, its table printed and put between
    the README's <part>-bench markers (`about` follows the date line)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{part}-results.json").write_text(json.dumps(results, indent=2) + "\n")
    measured = f"Measured {results['date'][:10]} on {results['machine']}{about}."
    into_readme(readme, f"{part}-bench", f"{measured}\n\n{text}\n")
    print()
    print(text)
