#!/usr/bin/env python
"""Run an experiment notebook and store the executed copy, with its provenance, as a page of the book's Results part.

    python tools/publish_result.py EXPERIMENT [--config YAML] [--name PAGE] [key=value ...]

runs `mbldm.experiments.run_experiment(EXPERIMENT, ...)` (papermill, a fresh run folder under `runs/`) and writes
`results/<PAGE>.ipynb` (PAGE defaults to the experiment's name, plus the config's stem if one is given): the executed
notebook with a provenance cell after its title (command, commit, machine, date, wall time) and the same facts in
`metadata.mbldm_result`. `tools/build_docs.py` renders these notebooks without executing them and fails when one
refers to an experiment that no longer exists. A dirty work tree is refused (the commit would not say what ran)
unless `--allow-dirty` is given, in which case the page says so.
"""
import argparse, datetime, json, os, platform, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT/'results'
META_KEY = 'mbldm_result'

def git(*args) -> str:
    return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

def machine() -> str:
    "One line naming the machine: OS, CPU model and cores, memory, GPU (if torch sees one), Python and torch."
    import torch
    cpu = platform.processor() or platform.machine()
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): pass
    try: mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError): mem = 'RAM unknown'
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'
    try: load = f", load average {os.getloadavg()[0]:.1f} at the start (other jobs share the cores: times are upper bounds)" \
        if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1) else ''
    except OSError: load = ''
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({cpu}), {mem}, {gpu}; "
            f"Python {platform.python_version()}, torch {torch.__version__}{load}")

def _duration(s: float) -> str:
    m, s = divmod(round(s), 60); h, m = divmod(m, 60)
    return f"{h} h {m} min" if h else f"{m} min {s} s" if m else f"{s} s"

def provenance_text(p: dict) -> str:
    "The provenance paragraph shown at the top of a results page."
    params = ', '.join(f"`{k}={v!r}`" for k, v in p['overrides'].items())
    setting = (f"the config `{p['config']}`" if p['config'] else "the experiment's built-in CPU defaults") + \
              (f" with {params}" if params else '')
    dirty = ' **plus uncommitted changes**' if p['dirty'] else ''
    return (f"**Provenance.** Executed on {p['date']} by `{p['command']}` at commit `{p['commit'][:10]}`{dirty}, "
            f"with {setting}; wall time {_duration(p['wall_s'])}. Machine: {p['machine']}. "
            f"The experiment's source is `mbldm/experiments/{p['experiment']}.ipynb`; this page is its executed copy, "
            f"stored and rendered without re-executing.")

def result_notebook(executed: dict, prov: dict) -> dict:
    "The executed notebook `executed` with `prov` in its metadata and a provenance cell after the title cell."
    nb = json.loads(json.dumps(executed))
    nb.setdefault('metadata', {})[META_KEY] = prov
    cell = {'cell_type': 'markdown', 'id': 'provenance', 'metadata': {}, 'source': provenance_text(prov)}
    cells = nb['cells']
    at = 1 if cells and cells[0]['cell_type'] == 'markdown' and cells[0]['source'] and \
        ''.join(cells[0]['source']).lstrip().startswith('# ') else 0
    cells.insert(at, cell)
    return nb

def check_result(path: Path, experiments_dir: Path) -> list[str]:
    "Problems with one results page: not a notebook, no provenance, or an experiment that no longer exists."
    try: nb = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e: return [f"{path}: not a readable notebook ({e})"]
    p = nb.get('metadata', {}).get(META_KEY)
    if not isinstance(p, dict): return [f"{path}: no '{META_KEY}' provenance in its metadata (write it with tools/publish_result.py)"]
    missing = [k for k in ('experiment', 'command', 'commit', 'machine', 'date', 'wall_s') if k not in p]
    if missing: return [f"{path}: provenance lacks {', '.join(missing)}"]
    if not (experiments_dir/f"{p['experiment']}.ipynb").is_file():
        return [f"{path}: refers to experiment '{p['experiment']}', which no longer exists in {experiments_dir} "
                "(rerun it under its new name or delete the page)"]
    if not any(c.get('id') == 'provenance' for c in nb.get('cells', [])): return [f"{path}: has no provenance cell"]
    return []

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('experiment'); ap.add_argument('overrides', nargs='*', metavar='key=value')
    ap.add_argument('--config', help='YAML config (e.g. a shipped *_paper.yaml)')
    ap.add_argument('--name', help='page name (default: the experiment, plus the config stem)')
    ap.add_argument('--allow-dirty', action='store_true', help='run even if the work tree has uncommitted changes')
    a = ap.parse_intermixed_args(argv)  # options may come between the experiment and its key=value overrides
    sys.path.insert(0, str(ROOT))
    from mbldm.core import atomic_write
    from mbldm.experiments import run_experiment, experiment_path, new_run_dir, parse_overrides, ExperimentError
    try: nb_path = experiment_path(a.experiment); parse_overrides(a.overrides)
    except (ValueError, FileNotFoundError) as e: print(f"publish_result: {e}", file=sys.stderr); return 2
    dirty = bool(git('status', '--porcelain', '--untracked-files=no'))
    if dirty and not a.allow_dirty:
        print("publish_result: the work tree has uncommitted changes; commit them (or pass --allow-dirty)", file=sys.stderr)
        return 2
    commit = git('rev-parse', 'HEAD')
    name = a.name or nb_path.stem + (f"-{Path(a.config).stem}" if a.config else '')
    # figures must reach the stored notebook: the kernel shows them inline whatever MPLBACKEND the shell has (Agg in CI)
    os.environ['MPLBACKEND'] = 'module://matplotlib_inline.backend_inline'
    run_dir, mach = new_run_dir(nb_path.stem), machine()
    t0 = time.time()
    try: run_experiment(nb_path.stem, a.config, a.overrides, run_dir=run_dir)
    except ExperimentError as e: print(f"publish_result: {e}", file=sys.stderr); return 1
    except (ValueError, FileNotFoundError) as e: print(f"publish_result: {e}", file=sys.stderr); return 2  # bad config or key=value
    wall = time.time() - t0
    cmd = ' '.join(['python tools/publish_result.py', a.experiment] + (['--config', a.config] if a.config else []) + a.overrides)
    prov = dict(experiment=nb_path.stem, command=cmd, commit=commit, dirty=dirty, machine=mach,
                date=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'), wall_s=round(wall, 1),
                config=a.config, overrides=dict(o.split('=', 1) for o in a.overrides), run_dir=str(run_dir))
    executed = json.loads((run_dir/nb_path.name).read_text())
    RESULTS.mkdir(exist_ok=True)
    with atomic_write(RESULTS/f'{name}.ipynb', 'w') as f: json.dump(result_notebook(executed, prov), f, indent=1); f.write('\n')
    print(f"publish_result: wrote {RESULTS.relative_to(ROOT)}/{name}.ipynb ({_duration(wall)}; run folder {run_dir})")
    return 0

if __name__ == '__main__': sys.exit(main())
