#!/usr/bin/env python
"""Build the offline docs site of this nbdev project into `_docs/` without Quarto.

1. nbdev processes every notebook in `nbs/` into `_proc/` (show_doc output, front matter, doc links), exactly
   as `nbdev_proc_nbs` does, with its Quarto installer switched off;
2. `_proc/` is converted into a Jupyter Book 1 source folder `_book/` (Quarto-only syntax -> MyST, nbdev's page
   names kept: `00_core.ipynb` -> `core.ipynb` -> `core.html`, so `core.html#read_image` links work);
3. `jupyter-book build _book -W` (warnings are errors, notebooks are not executed, MathJax is bundled by
   sphinx-mathjax-offline) and the HTML is moved to `_docs/` (`_docs/index.html`).

Exits non-zero on any nbdev warning or error, Sphinx warning, or external script in the built HTML.
Usage: python tools/build_docs.py [--reuse-proc]   (`_proc/` and `_book/` are kept for inspection; all three are gitignored)
"""
import copy, json, os, re, shutil, subprocess, sys, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROC, BOOK, DOCS = ROOT/'_proc', ROOT/'_book', ROOT/'_docs'
RESULTS = ROOT/'results'   # executed experiment notebooks with provenance (tools/publish_result.py): the Results part
ASSETS = {'.png', '.jpg', '.jpeg', '.gif', '.svg', '.webp', '.pdf', '.mp4'}
sys.path.insert(0, str(ROOT))   # the notebooks import the library even when it is not pip-installed
os.environ.setdefault('MPLBACKEND', 'Agg')
os.environ.setdefault('WANDB_MODE', 'disabled')

def fail(msg, problems=()):
    print(f"\nbuild_docs: FAILED: {msg}")
    for p in problems: print(f"  - {p}")
    sys.exit(1)

# ---------------------------------------------------------------- 1. nbdev processing into _proc/
def source_files(nbs):
    "Pages in nbdev's sidebar order: `index` first, then by file name (top-level notebooks and .md/.qmd pages)."
    fs = [p for p in nbs.iterdir() if p.suffix in ('.ipynb', '.md', '.qmd') and not p.name.startswith(('_', '.'))]
    return sorted(fs, key=lambda p: ('0' if p.stem == 'index' else '1') + p.name)

def _register_own_doclinks(lib_name):
    "Make nbdev link this project's symbols even when it is not pip-installed (same links either way)."
    import nbdev.doclinks as dl
    from importlib.metadata import EntryPoint
    orig = dl.entry_points
    def eps(**kw):
        res = list(orig(**kw))
        if kw.get('group') == 'nbdev' and lib_name not in [e.name for e in res]:
            res.append(EntryPoint(name=lib_name, value=f'{lib_name}._modidx:d', group='nbdev'))
        return res
    dl.entry_points = eps

def nbdev_process(cfg, files):
    "Run nbdev's processors on each notebook (nbdev_proc_nbs without Quarto); return a list of problems."
    import nbdev.quarto, nbdev.serve_drv, nbdev.doclinks, nbdev.processors
    from nbdev.processors import FilterDefaults
    nbdev.quarto._ensure_quarto = lambda: None   # never download/install Quarto or pip-install the package
    mixed = []
    def do_eval(cell, _orig=nbdev.processors._do_eval):
        "nbdev's rule, except that a cell mixing imports with other code is reported and not run (side effects)."
        import ast
        ok = _orig(cell)
        if ok and not (cell.directives_.keys() & {'export', 'exports', 'exporti', 'exec_doc'}) \
           and nbdev.processors._ast_contains(cell.parsed_(), (ast.Import, ast.ImportFrom)) \
           and nbdev.processors._ast_contains(cell.parsed_(), (ast.Expr, ast.Assign)):
            mixed.append(next((l for l in cell.source.splitlines() if 'import' in l), cell.source.splitlines()[0]))
            return False
        return ok
    nbdev.processors._do_eval = do_eval
    _register_own_doclinks(cfg.lib_name)
    nbdev.doclinks._build_modidx()
    for _ in range(3):    # the symbol index must load, or pages silently lose their source and doc links
        sys.modules.pop(f'{cfg.lib_name}._modidx', None)
        nbdev.doclinks._build_lookup_table.cache_clear()
        if cfg.lib_name in nbdev.doclinks.NbdevLookup().entries: break
        time.sleep(1)
    else: fail(f"nbdev cannot load {cfg.lib_name}/_modidx.py (run nbdev_export)")
    shutil.rmtree(PROC, ignore_errors=True); PROC.mkdir()
    problems = []
    for src in files:
        dst = PROC/src.name
        if src.suffix != '.ipynb': shutil.copy2(src, dst); continue
        cwd = os.getcwd()
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter('always')
            try: nbdev.serve_drv.main((src, dst, FilterDefaults))
            except Exception as e:
                cause = f" ({type(e.__cause__).__name__}: {' '.join(str(e.__cause__).split())[:200]})" if e.__cause__ else ''
                problems.append(f"nbs/{src.name}: nbdev could not process it: {str(e).splitlines()[0]}{cause}. "
                                "nbdev runs only export, show_doc and import cells when rendering docs, so a "
                                "cell there that needs a lesson cell's variables fails")
                dst.unlink(missing_ok=True)
            finally: os.environ.pop('IN_TEST', None); os.chdir(cwd)
        for line in mixed:
            problems.append(f"nbs/{src.name}: a cell mixes imports with other code (nbdev would run it while "
                            f"rendering docs, out of context; put the imports in their own cell): {line.strip()!r}")
        mixed.clear()
    return problems

# ---------------------------------------------------------------- 2. Quarto/nbdev -> MyST conversion
_FENCE = re.compile(r'^(\s*)(`{3,}|~{3,})')
_PROTECT = re.compile(r'(\$\$.*?\$\$|(?<![\\$])\$(?!\s)[^$\n]+?(?<![\s\\])\$(?!\d)|`+[^`]*?`+|<!--.*?-->)', re.S)
_DIV_OPEN = re.compile(r'^\s*(:{3,})\s*\{([^}]*)\}\s*$')
_DIV_OPEN_BARE = re.compile(r'^\s*(:{3,})\s*(\.[\w-]+)\s*$')
_DIV_CLOSE = re.compile(r'^\s*:{3,}\s*$')
_CALLOUTS = {'note': 'note', 'tip': 'tip', 'warning': 'warning', 'important': 'important', 'caution': 'caution'}

def pandoc_id(s):
    "The id Pandoc (Quarto) gives a heading, which nbdev's doc links point at."
    s = re.sub(r'[^\w\s.\-]', '', s.strip().lower())
    return re.sub(r'\s+', '-', s)

def _quarto_attrs(s):
    "Parse `.class #id key=\"v\"` into (classes, id, dict)."
    kv = dict(re.findall(r'([\w-]+)\s*=\s*"([^"]*)"', s)) | dict(re.findall(r'([\w-]+)\s*=\s*([^\s"]+)', s))
    rest = re.sub(r'[\w-]+\s*=\s*("[^"]*"|\S+)', '', s)
    return re.findall(r'\.([\w-]+)', rest), (re.findall(r'#([\w-]+)', rest) or [None])[0], kv

def _inline(text, page_of):
    "Fix Pandoc inline syntax and links in a stretch of markdown outside code and math."
    parts = _PROTECT.split(text)
    for i in range(0, len(parts), 2):
        t = parts[i]
        t = re.sub(r'(\]\([^)\s]*(?:\s+"[^"]*")?\))\{[^}\n]*\}', r'\1', t)    # [x](url){target=..}, ![](img){width=..}
        t = re.sub(r'(?<!!)\[([^\]\n]+)\]\{[^}\n]*\}', r'\1', t)              # [span]{.class}
        t = re.sub(r'\]\(([^)\s]+)\)', lambda m: '](' + page_of(m.group(1)) + ')', t)
        parts[i] = t
    return ''.join(parts)

def _heading(line):
    "`## Title {#id .unnumbered}` -> an anchor for the id plus the plain heading."
    m = re.match(r'^(#{1,6}\s+.*?)\s*\{([^}]*)\}\s*$', line)
    if not m or '$' in line: return [line]
    _, hid, _ = _quarto_attrs(m.group(2))
    return ([f'<a id="{hid}"></a>', ''] if hid else []) + [m.group(1)]

def _blocks(lines):
    "Split markdown lines into a tree of Quarto fenced divs: items are str lines or (attrs, children)."
    root, stack, fence = [], [], None
    cur = root
    for l in lines:
        if fence:
            cur.append(l)
            if l.strip().startswith(fence): fence = None
            continue
        m = _FENCE.match(l)
        if m: fence = m.group(2); cur.append(l); continue
        mo = _DIV_OPEN.match(l) or _DIV_OPEN_BARE.match(l)
        if mo and (re.search(r'[.#=]', mo.group(2))):
            node = (mo.group(2), []); cur.append(node); stack.append(cur); cur = node[1]; continue
        if _DIV_CLOSE.match(l) and stack: cur = stack.pop(); continue
        cur.append(l)
    return root

def _depth(items):
    return max([1 + _depth(it[1]) for it in items if isinstance(it, tuple)], default=0)

def _render(items, page_of):
    out, text = [], []
    def flush():
        if text: out.extend(_render_text(text, page_of)); text.clear()
    for it in items:
        if isinstance(it, str): text.append(it); continue
        flush()
        attrs, kids = it
        classes, _, kv = _quarto_attrs(attrs)
        kind = next((c[len('callout-'):] for c in classes if c.startswith('callout-')), None)
        if kind is None: out.extend(_render(kids, page_of)); continue       # layout divs: keep the content
        title = kv.get('title')
        body = list(kids)
        first = next((i for i, x in enumerate(body) if isinstance(x, str) and x.strip()), None)
        if title is None and first is not None and re.match(r'^#{1,6}\s', body[first]):
            title = re.sub(r'^#{1,6}\s+', '', body.pop(first)).strip()
        colons = ':' * (3 + _depth(kids))
        name = _CALLOUTS.get(kind, 'note')
        drop = ' dropdown' if str(kv.get('collapse', 'false')).lower() == 'true' else ''
        if title: out += [f'{colons}{{admonition}} {_inline(title, page_of)}', f':class: {name}{drop}']
        else: out += [f'{colons}{{{name}}}'] + ([f':class:{drop}'] if drop else [])
        out += [''] + _render(body, page_of) + [colons, '']
    flush()
    return out

def _render_text(lines, page_of):
    out, fence, buf = [], None, []
    def flush():
        if buf: out.extend(_inline('\n'.join(buf), page_of).split('\n')); buf.clear()
    for l in lines:
        if fence:
            out.append(l)
            if l.strip().startswith(fence): fence = None
            continue
        m = _FENCE.match(l)
        if m:
            flush(); fence = m.group(2)
            lang = re.match(r'^(\s*[`~]{3,})\s*\{?\.?([\w+-]*)[^}`]*\}?\s*$', l)   # ```{.python filename=..} -> ```python
            out.append(f'{lang.group(1)}{lang.group(2)}' if lang and '{' in l else l); continue
        if re.match(r'^#{1,6}\s', l): flush(); out.extend(_inline(h, page_of) for h in _heading(l)); continue
        l = re.sub(r'(\$\$)\s*\{#[\w-]+\}\s*$', r'\1', l)                        # $$ {#eq-x}
        buf.append(l)
    flush()
    return out

def convert_markdown(md, page_of):
    "Quarto/Pandoc markdown -> MyST markdown (callouts, attributes, links)."
    return '\n'.join(_render(_blocks(md.split('\n')), page_of)).strip('\n')

def _unlink_code(m):
    "A show_doc signature block: no markdown links inside code, no blank lines at its ends."
    lines = re.sub(r'\[(`[^`\n]+`)\]\([^)\s]*\)', r'\1', m.group(0)).split('\n')
    body = '\n'.join(lines[1:-1]).strip('\n')
    return '\n'.join([lines[0], body, lines[-1]])

def fix_showdoc_md(md, page_of):
    "show_doc markdown: drop the leading `---` rule docutils rejects, add the Pandoc anchor of its heading."
    md = re.sub(r'^\s*---\s*\n', '', md)
    md = re.sub(r'^```.*?^```', _unlink_code, md, flags=re.M | re.S)    # nbdev links backticks inside signatures
    md = re.sub(r'^\[source\]\((\S+)\)(?:\{[^}\n]*\})?[ \t]*$', r'<p class="showdoc-source"><a href="\1">source</a></p>', md, flags=re.M)
    md = convert_markdown(md, page_of)
    m = re.search(r'^#{1,6}\s+(.+?)\s*$', md, re.M)
    return (f'<a id="{pandoc_id(m.group(1))}"></a>\n\n' if m else '') + md

def _src(x): return ''.join(x) if isinstance(x, list) else (x or '')

def _cell_opts(src):
    "Split `#| key: value` lines off the top of a code cell."
    opts, lines = {}, src.split('\n')
    while lines and re.match(r'^\s*#\|', lines[0]):
        m = re.match(r'^\s*#\|\s*([\w-]+)\s*:?\s*(.*)$', lines.pop(0))
        if m: opts[m.group(1)] = m.group(2).strip().strip('"\'')
    return opts, '\n'.join(lines).strip('\n')

# What an offline static page can show; widget views, javascript, plotly etc. would need a CDN or a kernel.
_KEEP_MIME = {'text/html', 'text/markdown', 'text/latex', 'text/plain', 'image/png', 'image/jpeg', 'image/gif',
              'image/svg+xml'}

def _clean_output(o):
    o = copy.deepcopy(o)
    if 'data' in o:
        o['data'] = {k: v for k, v in o['data'].items() if k in _KEEP_MIME}
        if 'text/markdown' in o['data']: o['data']['text/markdown'] = re.sub(r'^\s*---\s*\n', '', _src(o['data']['text/markdown']))
        if not o['data']: return None
    return o

def _md(src): return {'cell_type': 'markdown', 'metadata': {}, 'source': src}

def convert_notebook(nb, page_of):
    "A processed nbdev notebook -> a notebook Jupyter Book renders without executing it."
    cells, fm = [], {}
    import yaml
    for c in nb['cells']:
        src = _src(c['source'])
        if c['cell_type'] == 'raw' and src.lstrip().startswith('---') and not fm and not cells:
            fm = yaml.safe_load(src.strip().strip('-')) or {}
            continue
        if c['cell_type'] == 'raw': continue
        if c['cell_type'] == 'markdown':
            if src.strip().startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            cells.append(_md(convert_markdown(src, page_of)))
            if c.get('attachments'): cells[-1]['attachments'] = c['attachments']
            continue
        opts, code = _cell_opts(src)
        if opts.get('include') == 'false': continue
        outs = [o for o in map(_clean_output, c.get('outputs', [])) if o]
        if opts.get('output') == 'asis':
            mds = [_src(o['data']['text/markdown']) for o in outs if 'text/markdown' in o.get('data', {})]
            if mds:
                cells.append(_md('\n\n'.join(fix_showdoc_md(m, page_of) if 'show_doc' in code else convert_markdown(m, page_of) for m in mds)))
                if opts.get('echo') != 'false': cells.insert(-1, _code(code, [], {}))
                continue
        tags = []
        if opts.get('echo') == 'false': tags.append('remove-input')
        if opts.get('output') == 'false': tags.append('remove-output')
        if opts.get('code-fold') in ('true', 'True'): tags.append('hide-input')
        md = {'tags': tags} if tags else {}
        if opts.get('fig-cap'): md['mystnb'] = {'figure': {'caption': opts['fig-cap']}}
        if not code and not outs: continue
        cells.append(_code(code, outs, md))
    title = fm.get('title') or 'Untitled'
    head = [f'# {title}']
    if fm.get('description'): head += ['', ':::{rubric} ' + ' '.join(str(fm['description']).split()), ':class: subtitle', ':::']
    cells.insert(0, _md('\n'.join(head)))
    meta = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
            'language_info': {'name': 'python'}}
    for i, c in enumerate(cells): c['id'] = f'cell-{i}'
    return {'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}, fm

def convert_result(nb, page_of):
    "An executed experiment notebook (results/*.ipynb) -> a page; outputs kept, nothing re-executed."
    cells = []
    for c in nb['cells']:
        src = _src(c['source'])
        if c['cell_type'] == 'markdown': cells.append(_md(convert_markdown(src, page_of))); continue
        if c['cell_type'] != 'code': continue
        tags = c.get('metadata', {}).get('tags', [])
        outs = [o for o in map(_clean_output, c.get('outputs', [])) if o]
        # papermill's injected parameters are the run's settings: folded, not hidden
        cells.append(_code(src, outs, {'tags': ['hide-input']} if 'injected-parameters' in tags else {}))
    if not cells or not _src(cells[0]['source']).lstrip().startswith('# '):
        cells.insert(0, _md(f"# {nb['metadata']['mbldm_result']['experiment']}"))
    for i, c in enumerate(cells): c['id'] = f'cell-{i}'
    meta = {'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'},
            'language_info': {'name': 'python'}}
    return {'cells': cells, 'metadata': meta, 'nbformat': 4, 'nbformat_minor': 5}

def result_pages():
    "results/*.ipynb, each checked (provenance present, its experiment still exists); fails the build otherwise."
    import importlib.util
    spec = importlib.util.spec_from_file_location('publish_result', ROOT/'tools'/'publish_result.py')
    pr = importlib.util.module_from_spec(spec); spec.loader.exec_module(pr)
    pages = sorted(RESULTS.glob('*.ipynb')) if RESULTS.is_dir() else []
    problems = [p for f in pages for p in pr.check_result(f, ROOT/'mbldm'/'experiments')]
    if problems: fail("the Results part refers to experiments or provenance that do not exist", problems)
    return [(f, json.loads(f.read_text())) for f in pages]

def results_index(pages):
    "The Results part's first page: what the pages are and one line per page."
    lines = ["# Results", "",
             "Each page of this part is an experiment notebook of `mbldm/experiments/`, executed once and stored with",
             "its outputs (`results/*.ipynb`, written by `python tools/publish_result.py EXPERIMENT`). The book shows",
             "them as they ran, without re-executing; the provenance line at the top of each page says the command, the",
             "commit, the machine, the date and the wall time. Numbers from CPU defaults are small-scale runs on a",
             "laptop-class machine, not the papers' settings; where a stand-in replaces a real metric, the page says so.", ""]
    for f, nb in pages:
        p = nb['metadata']['mbldm_result']
        title = next((_src(c['source']).lstrip()[2:].splitlines()[0] for c in nb['cells']
                      if c['cell_type'] == 'markdown' and _src(c['source']).lstrip().startswith('# ')), p['experiment'])
        lines.append(f"- [{title}](results/{f.stem}.ipynb): `{p['command']}`, commit `{p['commit'][:10]}`, {p['date']}")
    return '\n'.join(lines) + '\n'

def _code(code, outs, md):
    return {'cell_type': 'code', 'execution_count': None, 'metadata': md, 'outputs': outs, 'source': code}

def convert_md_page(text, page_of):
    fm = {}
    m = re.match(r'^---\s*\n(.*?)\n---\s*\n', text, re.S)
    if m:
        import yaml
        fm, text = yaml.safe_load(m.group(1)) or {}, text[m.end():]
    head = f"# {fm['title']}\n\n" if fm.get('title') else ''
    return head + convert_markdown(text, page_of) + '\n', fm

def page_name(src, fm=None):
    "nbdev's output page: `output-file` from the front matter, else the file name without its number prefix."
    if fm and fm.get('output-file'): return Path(fm['output-file']).stem
    return re.sub(r'^\d+[a-z]?_', '', src.stem)

# ---------------------------------------------------------------- 3. Jupyter Book
EXT = '''"""Offline site: drop sphinx-thebe's scripts (they point at unpkg.com; this book has no live kernels)."""
def _no_thebe(app, pagename, templatename, context, doctree):
    js = context.get('script_files') or []
    context['script_files'] = [j for j in js if 'thebe' not in str(getattr(j, 'filename', j) or '').lower()
                               and 'THEBE_JS_URL' not in str(getattr(j, 'attributes', {}).get('body', ''))]

def setup(app):
    app.connect('html-page-context', _no_thebe, priority=900)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
'''

CSS = """
p.rubric.subtitle { display: block; font-size: 1.2rem; font-weight: 400; color: var(--pst-color-text-muted);
                   margin-top: -0.5rem; border: none; }
p.rubric.subtitle::after { display: none; }
.cell_output img { max-width: 100%; height: auto; }
p.showdoc-source { float: right; margin: 0.4rem 0 0 1rem; font-size: 0.85rem; }
.bd-content h3 { font-family: var(--pst-font-family-monospace); font-size: 1.15rem; }
"""

def book_config(cfg):
    import yaml
    conf = {
        'title': cfg.title, 'author': cfg.author, 'copyright': cfg.copyright, 'only_build_toc_files': True,
        'execute': {'execute_notebooks': 'off'},
        'parse': {'myst_enable_extensions': ['amsmath', 'colon_fence', 'dollarmath', 'html_image']},
        'html': {'use_repository_button': False, 'home_page_in_navbar': True, 'extra_footer': ''},
        'sphinx': {'extra_extensions': ['sphinx-mathjax-offline'], 'local_extensions': {'offline_site': '_ext'},
                   'config': {'myst_all_links_external': True, 'suppress_warnings': ['myst.header', 'misc.highlighting_failure'],
                              'html_static_path': ['_static'], 'html_css_files': ['mbldm.css'],
                              'html_show_sourcelink': False, 'nb_merge_streams': True,
                              'html_theme_options': {'search_bar_text': 'Search this book...',
                                                     'use_download_button': False, 'use_fullscreen_button': False,
                                                     'show_toc_level': 2}}},
    }
    return yaml.safe_dump(conf, sort_keys=False)

def convert(cfg, files):
    "Write `_book/`: converted pages, assets, `_config.yml`, `_toc.yml`; return the page order."
    import yaml
    shutil.rmtree(BOOK, ignore_errors=True); BOOK.mkdir()
    names = {}
    for src in files:
        fm = {}
        if src.suffix == '.ipynb' and (PROC/src.name).exists():
            first = json.loads((PROC/src.name).read_text())['cells'][:1]
            if first and first[0]['cell_type'] == 'raw':
                fm = yaml.safe_load(_src(first[0]['source']).strip().strip('-')) or {}
        names[src.name] = page_name(src, fm)
    dup = {n for n in names.values() if list(names.values()).count(n) > 1}
    if dup: fail(f"two notebooks render to the same page name: {sorted(dup)}")
    site = (cfg.doc_host.rstrip('/') + '/' + cfg.doc_baseurl.strip('/') + '/').replace(':/', '://').replace(':///', '://')
    def page_of(url):
        "Rewrite a link target: this site's absolute URLs and notebook links -> relative HTML pages."
        if url.startswith(site): url = url[len(site):]
        if re.match(r'^[a-z]+:|^#|^/', url): return url
        path, _, frag = url.partition('#')
        p = Path(path)
        if p.suffix in ('.ipynb', '.qmd', '.md') and p.name in names or p.suffix in ('.ipynb', '.qmd'):
            path = names.get(p.name, page_name(p)) + '.html'
        return path + ('#' + frag if frag else '')
    for src in files:
        proc = PROC/src.name
        if not proc.exists(): continue
        if src.suffix == '.ipynb':
            nb, _ = convert_notebook(json.loads(proc.read_text()), page_of)
            (BOOK/f'{names[src.name]}.ipynb').write_text(json.dumps(nb, indent=1, sort_keys=True))
        else:
            text, _ = convert_md_page(proc.read_text(), page_of)
            (BOOK/f'{names[src.name]}.md').write_text(text)
    for a in (ROOT/cfg.nbs_path.name).rglob('*'):
        rel = a.relative_to(ROOT/cfg.nbs_path.name)
        if a.is_file() and a.suffix.lower() in ASSETS and not any(s.startswith(('_', '.')) for s in rel.parts):
            (BOOK/rel).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(a, BOOK/rel)
    order = [names[s.name] for s in files if (PROC/s.name).exists()]
    if 'index' not in order: fail("nbs/ has no index notebook (the site's home page)")
    toc = {'format': 'jb-book', 'root': 'index', 'chapters': [{'file': n} for n in order if n != 'index'] or None}
    if toc['chapters'] is None: del toc['chapters']
    results = result_pages()
    if results:
        (BOOK/'results').mkdir()
        for f, nb in results: (BOOK/'results'/f.name).write_text(json.dumps(convert_result(nb, page_of), indent=1, sort_keys=True))
        (BOOK/'results.md').write_text(results_index(results))
        toc = {'format': 'jb-book', 'root': 'index',
               'parts': [{'caption': 'The book', 'chapters': toc.get('chapters', [])},
                         {'caption': 'Results', 'chapters': [{'file': 'results', 'sections': [{'file': f'results/{f.stem}'} for f, _ in results]}]}]}
        order += ['results'] + [f'results/{f.stem}' for f, _ in results]
    (BOOK/'_toc.yml').write_text(yaml.safe_dump(toc, sort_keys=False))
    (BOOK/'_config.yml').write_text(book_config(cfg))
    (BOOK/'_static').mkdir(); (BOOK/'_static'/'mbldm.css').write_text(CSS)
    (BOOK/'_ext').mkdir(); (BOOK/'_ext'/'offline_site.py').write_text(EXT)
    return order

def jupyter_book():
    exe = Path(sys.executable).parent/'jupyter-book'
    return [str(exe)] if exe.exists() else [sys.executable, '-m', 'jupyter_book']

def build_book():
    cmd = jupyter_book() + ['build', str(BOOK), '-W', '--keep-going', '--builder', 'html']
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, 'NO_COLOR': '1'})
    log = re.sub(r'\x1b\[[0-9;]*m', '', r.stdout + r.stderr)
    issues = [l.strip() for l in log.splitlines() if re.search(r'WARNING|ERROR|CRITICAL|Traceback|Exception', l)]
    if r.returncode != 0 or issues:
        print(log[-6000:])
        fail(f"jupyter-book build -W failed (exit {r.returncode})", issues or [log.strip().splitlines()[-1]])
    html = BOOK/'_build'/'html'
    shutil.rmtree(DOCS, ignore_errors=True)
    shutil.move(str(html), str(DOCS))
    (DOCS/'.nojekyll').touch()
    shutil.rmtree(BOOK/'_build', ignore_errors=True)

_EXT = re.compile(r'<(script|link|img|iframe)\b[^>]*\b(?:src|href)=["\'](https?:)?//[^"\']+', re.I)

def check_site(order):
    "The site exists, every page was written, and no page loads anything from the network."
    problems = [f"{n}.html missing" for n in order if not (DOCS/f'{n}.html').exists()]
    for f in sorted(DOCS.rglob('*.html')):
        for m in _EXT.finditer(f.read_text(errors='replace')):
            if m.group(1).lower() == 'link' and not re.search(r'rel=["\']?(stylesheet|preload|modulepreload|icon)', m.group(0)):
                continue
            problems.append(f"{f.relative_to(DOCS)} loads an external resource: {m.group(0)[:120]}")
    if problems: fail("the built site is incomplete or not offline", problems)

def main(argv=None):
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--reuse-proc', action='store_true', help='development only: convert the _proc/ of the last run again')
    a = ap.parse_args(argv)
    t0 = time.time()
    os.chdir(ROOT)
    from nbdev.config import get_config
    cfg = get_config()
    nbs = ROOT/cfg.nbs_path.name
    files = source_files(nbs)
    if a.reuse_proc: problems = []  # development only: convert the `_proc/` of the last run again
    else: problems = nbdev_process(cfg, files)     # a notebook nbdev cannot process is left out, the rest is built
    t1 = time.time()
    order = convert(cfg, files)
    build_book()
    check_site(order)
    if problems: fail(f"the site was built ({len(order)} pages in {DOCS.relative_to(ROOT)}/, Sphinx clean) but nbdev "
                      f"reported problems in {len({p.split(':')[0] for p in problems})} notebooks", problems)
    print(f"build_docs: built {len(order)} pages ({', '.join(o + '.html' for o in order)}) "
          f"into {DOCS.relative_to(ROOT)}/index.html in {time.time()-t0:.1f}s "
          f"(nbdev processing {t1-t0:.1f}s, Jupyter Book {time.time()-t1:.1f}s); 0 warnings")

if __name__ == '__main__': main()
