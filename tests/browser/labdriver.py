"""Drive the course notebooks in a real JupyterLab, the way a student uses them.

`LabServer` starts `jupyter lab` on 127.0.0.1 with a random port and token and throw-away
config, data, runtime, settings and workspace folders, so it never reads or writes the
user's ~/.jupyter. Its contents manager refuses every save: a test run cannot modify the
committed, executed notebooks, whatever the page does.

`LabDriver` loads JupyterLab once in headless Chromium and, for each notebook, opens it (as
the file browser does), clears its outputs, runs all cells, waits until the run is over and
the kernel idle, and reads back what the page shows:

* Error outputs. JupyterLab 4.6 renders an `error` output with the stderr renderer: a
  traceback and a progress bar are both `.jp-OutputArea-output[data-mime-type=
  "application/vnd.jupyter.stderr"]`, with no class of their own. So the probe takes the
  output's type from the cell's output model (`outputs.get(j).type === "error"`) and what the
  student sees from the DOM node of that same output (`outputArea.widgets[j].node`). Output
  areas inside widgets (an explorer's Output) are reached through the Lumino widget tree.
  Errors the kernel sent on iopub that no output shows (JupyterLab puts them in the Log
  Console) are reported too. A cell tagged `raises-exception` may show an error, as in nbval.
* Cells that were not run, and widget views that did not render (`.jupyter-widgets` inside
  the output node; "Error displaying widget" and error views do not count).
* Explorers: a cell whose output is an `ipywidgets.interactive` (`.widget-interact`), or
  holds controls beside an Output widget (`.widget-output`, as `interactive_output` builds),
  or is marked by a `# EXPLORER` comment line or an `explorer` cell tag. Each control
  (slider, dropdown, toggle buttons, radio buttons, checkbox) is moved to a non-default
  value through the page (arrow key on the slider handle, a real selection or click), and
  the explorer's images, nested outputs and labels must change, with no error.

The probe needs `window.jupyterapp`, which the server exposes with
`--LabApp.expose_app_in_browser=True`; it finds the notebook's models and runs the commands
of the Edit and Run menus ("Clear Outputs of All Cells", "Run All Cells").
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Flags for Chromium on a machine without a display, GPU or internet.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-crash-reporter",
)

# JupyterLab user settings for the test server: render every cell (no virtual scrolling, so the
# DOM holds the whole notebook), never autosave, never fetch news or update notices.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}

# Server config: refuse every save, whatever asks for it, and keep the checkpoints JupyterLab
# makes when it opens a notebook out of the repository.
SERVER_CONFIG = '''\
from tornado.web import HTTPError


def refuse_every_save(model, path, contents_manager, **kwargs):
    raise HTTPError(403, f"this test server never writes files (refused to save {{path!r}})")


c.FileContentsManager.pre_save_hook = refuse_every_save
c.FileCheckpoints.checkpoint_dir = {checkpoint_dir!r}
'''

# The nbval cell tag for "this cell shows an error on purpose".
RAISES_EXCEPTION = "raises-exception"

SLIDER = "slider"
DROPDOWN = "dropdown"
TOGGLE_BUTTONS = "toggle buttons"
RADIO_BUTTONS = "radio buttons"
CHECKBOX = "checkbox"

# How the page shows each control's value (evaluated on the control's element).
CONTROL_VALUE_JS = {
    SLIDER: "n => { const box = n.closest('.widget-slider'); const r = box && box.querySelector('.widget-readout');"
            " return r ? r.textContent.trim() : String(n.getAttribute('aria-valuenow')); }",
    DROPDOWN: "s => s.selectedIndex >= 0 ? s.options[s.selectedIndex].text : ''",
    TOGGLE_BUTTONS: "g => { const b = g.querySelector('button.mod-active'); return b ? b.textContent.trim() : ''; }",
    RADIO_BUTTONS: "g => { const i = g.querySelector('input:checked');"
                   " return i ? i.parentElement.textContent.trim() : ''; }",
    CHECKBOX: "c => String(c.checked)",
}

# fmt: off
PROBE_JS = r"""
() => {
  if (window.titnProbe) return true;
  const app = window.jupyterapp;
  if (!app) return false;
  const probe = {iopub: {}};

  probe.panel = (path) => {
    for (const w of app.shell.widgets('main')) {
      if (w.context && w.context.path === path && w.content && w.content.widgets) return w;
    }
    return null;
  };

  probe.state = (path) => {
    const dialog = document.querySelector('.jp-Dialog');
    const state = {panel: false, dialog: dialog ? dialog.innerText.slice(0, 400) : null};
    const p = probe.panel(path);
    if (!p) return state;
    const kernel = p.sessionContext.session && p.sessionContext.session.kernel;
    const pending = Array.from(p.content.node.querySelectorAll('.jp-InputPrompt'))
      .filter(n => n.textContent.includes('*')).length;
    const io = probe.iopub[path] || {idle: 0, errors: []};
    return {...state, panel: true, ready: p.context.isReady, kernel: kernel ? kernel.status : null,
            pending, idle: io.idle, iopubErrors: io.errors.length, run: p.titnRun || null};
  };

  // Count kernel round trips (iopub "idle" after each request) and every error the kernel sends.
  probe.listen = (path) => {
    const p = probe.panel(path);
    const io = probe.iopub[path] = {idle: 0, errors: []};
    p.sessionContext.iopubMessage.connect((_, msg) => {
      const type = msg.header.msg_type;
      if (type === 'status' && msg.content.execution_state === 'idle') io.idle += 1;
      if (type === 'error') io.errors.push({ename: msg.content.ename, evalue: msg.content.evalue,
                                            parent: (msg.parent_header || {}).msg_type || null});
    });
  };

  probe.open = (path) => {
    app.commands.execute('docmanager:open', {path, factory: 'Notebook'});
    return true;
  };

  probe.runAll = async (path) => {
    const p = probe.panel(path);
    app.shell.activateById(p.id);
    await app.commands.execute('notebook:clear-all-cell-outputs');
    p.titnRun = {done: false};
    app.commands.execute('notebook:run-all-cells').then(
      ok => { p.titnRun = {done: true, ok: !!ok}; },
      err => { p.titnRun = {done: true, ok: false, error: String(err)}; });
  };

  const visible = (node) => !!node && node.getClientRects().length > 0;
  const textOf = (node) => node ? (node.innerText || node.textContent || '').slice(0, 2000) : '';

  function* walk(widget) {
    yield widget;
    if (typeof widget.children === 'function') for (const child of widget.children()) yield* walk(child);
  }

  // Error outputs of one output area: the model says which outputs are errors, the DOM node of
  // the same output says what is shown.
  const errorsIn = (area) => {
    const found = [];
    for (let j = 0; j < area.model.length; j++) {
      const out = area.model.get(j);
      if (out.type !== 'error') continue;
      const w = area.widgets[j];
      const node = w && (w.node.querySelector('.jp-OutputArea-output') || w.node);
      const raw = out.toJSON();
      found.push({ename: raw.ename, evalue: raw.evalue, visible: visible(node), text: textOf(node),
                  mime: node ? node.getAttribute('data-mime-type') : null});
    }
    return found;
  };

  // A widget view renders into the output node: a child `.jupyter-widgets` element. On failure the
  // node itself gets the class, with the text "Error displaying widget..." (or an error view).
  const rendered = (node) => !!node && !!node.querySelector('.jupyter-widgets')
    && !node.querySelector('.jupyter-widgets-error-widget')
    && !/^(Error displaying widget|Loading widget)/.test(textOf(node));

  // Widget views still waiting for their model ("Loading widget..."), across the notebook.
  probe.widgetsLoading = (path) => {
    const p = probe.panel(path);
    return Array.from(p.content.node.querySelectorAll('.jp-OutputArea-output'))
      .filter(n => !n.querySelector('.jupyter-widgets') && textOf(n).startsWith('Loading widget')).length;
  };

  // Output areas rendered inside widgets (e.g. the Output of an ipywidgets.interactive).
  const nestedAreas = (cell) => {
    const areas = [];
    for (const child of cell.outputArea.widgets) {
      for (const w of walk(child)) {
        if (w !== cell.outputArea && w.model && typeof w.model.get === 'function' && 'length' in w.model
            && w.node.classList.contains('jp-OutputArea')) areas.push(w);
      }
    }
    return areas;
  };

  probe.inspect = (path) => {
    const p = probe.panel(path);
    p.node.setAttribute('data-titn-notebook', path);
    return p.content.widgets.map((cell, index) => {
      cell.node.setAttribute('data-titn-cell', String(index));
      const model = cell.model;
      const source = model.sharedModel.getSource();
      const tags = (model.getMetadata && model.getMetadata('tags')) || [];
      const info = {index, type: model.type, source: source.slice(0, 2000), tags, outputWidget: false,
                    count: model.type === 'code' ? (model.executionCount ?? null) : null,
                    outputs: [], errors: [], nestedErrors: [], interact: false, controls: 0};
      if (model.type !== 'code') return info;
      for (let j = 0; j < model.outputs.length; j++) {
        const out = model.outputs.get(j);
        const w = cell.outputArea.widgets[j];
        const node = w && (w.node.querySelector('.jp-OutputArea-output') || w.node);
        const widgetView = 'application/vnd.jupyter.widget-view+json' in out.data;
        info.outputs.push({type: out.type, mime: node ? node.getAttribute('data-mime-type') : null,
                           widgetView, widgetRendered: widgetView && rendered(node),
                           text: textOf(node).slice(0, 300)});
      }
      info.errors = errorsIn(cell.outputArea);
      for (const area of nestedAreas(cell)) info.nestedErrors.push(...errorsIn(area));
      const out = cell.outputArea.node;
      // an ipywidgets.interactive, or controls next to an Output widget (interactive_output, hand-built)
      info.interact = !!out.querySelector('.widget-interact');
      info.outputWidget = !!out.querySelector('.widget-output');
      info.controls = out.querySelectorAll(
        '.widget-slider .noUi-handle, .widget-dropdown select, .widget-toggle-buttons, '
        + '.widget-radio-box, .widget-checkbox input').length;
      return info;
    });
  };

  // The errors one cell shows, in its own outputs and in those nested in its widgets.
  probe.cellErrors = (path, index) => {
    const cell = probe.panel(path).content.widgets[index];
    const found = errorsIn(cell.outputArea);
    for (const area of nestedAreas(cell)) found.push(...errorsIn(area));
    return found;
  };

  const fnv = (s) => {
    let h = 0x811c9dc5;
    for (let i = 0; i < s.length; i++) { h ^= s.charCodeAt(i); h = Math.imul(h, 0x01000193) >>> 0; }
    return h.toString(16).padStart(8, '0');
  };

  // What an explorer shows: its images, the outputs nested in its widgets, its labels and HTML.
  // The controls themselves (slider readouts, selections) are not part of it.
  probe.fingerprint = (path, index) => {
    const cell = probe.panel(path).content.widgets[index];
    const root = cell.outputArea.node;
    const parts = [];
    root.querySelectorAll('img').forEach(n => parts.push('img ' + n.getAttribute('src')));
    root.querySelectorAll('.jupyter-widgets .jp-OutputArea-output').forEach(n => parts.push('out ' + n.innerHTML));
    root.querySelectorAll('.widget-html-content, .widget-label').forEach(n => parts.push('txt ' + n.innerHTML));
    const joined = parts.join('\n');
    return {hash: fnv(joined) + ':' + joined.length, images: root.querySelectorAll('img').length};
  };

  probe.iopubErrors = (path) => (probe.iopub[path] || {errors: []}).errors;

  probe.interrupt = (path) => {
    const p = probe.panel(path);
    const kernel = p && p.sessionContext.session && p.sessionContext.session.kernel;
    if (kernel) kernel.interrupt().catch(() => {});
    return !!kernel;
  };

  // Close without saving: mark the document clean (so no "save changes?" dialog), ask the
  // server to end the kernel's session (the request completes in the background, the page
  // stays), dispose the panel.
  probe.close = (path) => {
    const p = probe.panel(path);
    if (!p) return false;
    p.context.model.dirty = false;
    const session = p.sessionContext.session;
    if (session) app.serviceManager.sessions.shutdown(session.id).catch(() => {});
    p.dispose();
    delete probe.iopub[path];
    return true;
  };

  // Ready the page for a whole-notebook screenshot: left sidebar closed, notebook scrolled to
  // the top; returns the height of the notebook's content.
  probe.prepareScreenshot = (path) => {
    const p = probe.panel(path);
    if (!p) return 0;
    app.shell.collapseLeft();
    let height = p.content.node.scrollHeight;
    for (const n of [p.content.node, ...p.content.node.querySelectorAll('.jp-WindowedPanel-outer')]) {
      height = Math.max(height, n.scrollHeight);
      n.scrollTop = 0;
    }
    return height;
  };

  window.titnProbe = probe;
  return true;
}
"""
# fmt: on


def in_ci() -> bool:
    """True when the environment says this is a CI run (CI set to anything but 0/false/no)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_chromium() -> str | None:
    """The system Chromium: $TITN_EDU_CHROMIUM, else `chromium` on PATH, else None."""
    override = os.environ.get("TITN_EDU_CHROMIUM")
    if override:
        return override if Path(override).is_file() and os.access(override, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _checkpoint_state(notebook: Path) -> tuple | None:
    """Size and time of the notebook's checkpoint in .ipynb_checkpoints/ beside it, if any."""
    path = notebook.parent / ".ipynb_checkpoints" / f"{notebook.stem}-checkpoint{notebook.suffix}"
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LabServer:
    """`jupyter lab` on 127.0.0.1 with a random port and token, isolated from the user's setup.

    The kernel is the native `python3` kernel of the interpreter running the server (this
    environment); the repository root comes first on the kernel's PYTHONPATH so the notebooks
    import this checkout of the package.
    """

    def __init__(self, root: Path, workdir: Path, *, log_path: Path | None = None, python: str = sys.executable):
        self.root = Path(root).resolve()
        self.workdir = Path(workdir)
        self.python = python
        self.token = secrets.token_urlsafe(32)
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = Path(log_path) if log_path else self.workdir / "jupyter-lab.log"
        self._descendants: set = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base_url}/{path.lstrip('/')}{sep}token={self.token}"

    def _environment(self) -> dict:
        names = ("config", "data", "runtime", "settings", "workspaces", "ipython")
        dirs = {name: self.workdir / name for name in names}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        for plugin, values in LAB_SETTINGS.items():
            target = dirs["settings"] / f"{plugin}.jupyterlab-settings"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(json.dumps(values, indent=2))
        checkpoints = self.workdir / "checkpoints"  # absolute: not inside the notebook's folder
        (dirs["config"] / "jupyter_server_config.py").write_text(SERVER_CONFIG.format(checkpoint_dir=str(checkpoints)))
        env = dict(os.environ)
        env.pop("JUPYTER_PATH", None)  # no kernels or extensions from elsewhere
        env.pop("JUPYTER_CONFIG_PATH", None)
        env.pop("MPLBACKEND", None)  # the kernel picks its inline backend, as for a student
        env.update(
            JUPYTER_TOKEN=self.token,
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
            IPYTHONDIR=str(dirs["ipython"]),
            PYTHONPATH=os.pathsep.join(p for p in (str(self.root), env.get("PYTHONPATH", "")) if p),
        )
        return env

    def start(self, timeout: float = 90.0) -> LabServer:
        env = self._environment()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path.write_bytes(b"")
        last_error = "no attempt"
        for _attempt in range(3):  # the free port can be taken between probing and binding
            self.port = _free_port()
            cmd = [
                self.python, "-m", "jupyterlab", "--no-browser",
                "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
                f"--ServerApp.root_dir={self.root}", "--ServerApp.allow_root=True",
                "--ServerApp.terminals_enabled=False", "--LabApp.expose_app_in_browser=True",
                "--LabApp.extension_manager=readonly",
            ]  # fmt: skip
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    cmd, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )  # fmt: skip
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    last_error = f"jupyter lab exited with code {self.process.returncode}"
                    break
                try:
                    with urllib.request.urlopen(self.url("api/status"), timeout=5) as response:
                        if response.status == 200:
                            return self
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.25)
            else:
                last_error = f"jupyter lab did not answer within {timeout:.0f} s"
            self.stop()
        raise RuntimeError(f"{last_error}; see its log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def remember_descendants(self) -> None:
        """Note the server's child processes (kernels run in sessions of their own)."""
        try:
            import psutil

            self._descendants.update(psutil.Process(self.process.pid).children(recursive=True))
        except Exception:  # noqa: BLE001 - psutil missing or the server already gone
            pass

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down the server and every kernel it started; kill what does not stop."""
        proc = self.process
        if proc is None:
            return
        self.remember_descendants()
        if proc.poll() is None:
            try:  # the polite way: the server shuts its kernels down itself
                request = urllib.request.Request(self.url("api/shutdown"), method="POST", data=b"")
                urllib.request.urlopen(request, timeout=5).close()
            except (urllib.error.URLError, OSError):
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    try:
                        os.killpg(proc.pid, sig)
                        proc.wait(5)
                        break
                    except (ProcessLookupError, subprocess.TimeoutExpired):
                        continue
        for child in self._descendants:
            try:
                if child.is_running():
                    child.kill()
            except Exception:  # noqa: BLE001 - gone already
                pass
        self._descendants.clear()
        self.process = None


@dataclass
class ExplorerReport:
    cell: int
    moved: list[str] = field(default_factory=list)  # "slider 'frequency': 1 -> 2"


@dataclass
class NotebookReport:
    path: str
    seconds: float = 0.0
    run_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)  # seconds per phase: open, run, explore, ...
    problems: list[str] = field(default_factory=list)
    cells: list[dict] = field(default_factory=list)
    explorers: list[ExplorerReport] = field(default_factory=list)
    stderr_outputs: int = 0
    reported_kernel_errors: set = field(default_factory=set)  # (ename, evalue) already in `problems`
    complete: bool = False  # False if the run was interrupted (e.g. Ctrl-C) before the checks ended
    screenshot: Path | None = None

    def describe(self) -> str:
        lines = [f"{self.path}: {len(self.problems)} problem(s) in JupyterLab"]
        lines += [f"  - {p}" for p in self.problems]
        if self.screenshot:
            lines.append(f"  screenshot: {self.screenshot}")
        return "\n".join(lines)


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip():
            return line.strip()[:80]
    return ""


def is_explorer(cell: dict) -> bool:
    """An explorer: an `ipywidgets.interactive`, controls beside an Output widget (as built by
    `interactive_output` or by hand), or a cell marked by `# EXPLORER` or an `explorer` tag."""
    if cell["type"] != "code":
        return False
    return cell["interact"] or (cell["controls"] > 0 and cell["outputWidget"]) or is_marked_explorer(cell)


def is_marked_explorer(cell: dict) -> bool:
    """A `# EXPLORER` comment line or an `explorer` tag marks a cell as an explorer."""
    if "explorer" in [str(t).lower() for t in cell.get("tags") or []]:
        return True
    return any(line.strip().upper().startswith("# EXPLORER") for line in cell.get("source", "").splitlines())


class LabDriver:
    """One JupyterLab server and one browser, shared by every notebook of a test session."""

    def __init__(
        self,
        server: LabServer,
        context,
        screenshot_dir: Path,
        *,
        open_timeout: float = 120.0,
        run_timeout: float = 240.0,
        change_timeout: float = 60.0,
    ):
        self.server = server
        self.context = context  # a Playwright BrowserContext
        self.screenshot_dir = Path(screenshot_dir)
        self.open_timeout = open_timeout
        self.run_timeout = run_timeout
        self.change_timeout = change_timeout
        self.reports: list[NotebookReport] = []
        self._page = None

    # -- one notebook ---------------------------------------------------------------------
    def run_notebook(self, notebook: Path, *, screenshot_name: str | None = None) -> NotebookReport:
        """Open, run, check and exercise one notebook; close it without saving. Never raises for
        what happens in the page: every failure becomes a line in `report.problems`."""
        notebook = Path(notebook).resolve()
        rel = notebook.relative_to(self.server.root).as_posix()
        report = NotebookReport(path=rel)
        self.reports.append(report)
        digest, checkpoint = file_digest(notebook), _checkpoint_state(notebook)
        start = clock = time.monotonic()

        def lap(phase: str) -> None:
            nonlocal clock
            now = time.monotonic()
            report.phases[phase] = round(now - clock, 2)
            clock = now

        page = None
        healthy = False
        try:
            page = self._lab_page()
            lap("load lab")
            self._open(page, rel)
            lap("open")
            self._run_all(page, rel, report)
            lap("run")
            self._wait_for_widgets(page, rel)
            report.cells = page.evaluate("p => window.titnProbe.inspect(p)", rel)
            self._check_outputs(report)
            for cell in report.cells:
                if is_explorer(cell):
                    self._exercise(page, rel, cell, report)
            lap("explore")
            self._check_unshown_kernel_errors(page, rel, report)
            healthy = True
        except Exception as exc:  # noqa: BLE001 - reported as a problem, next to the screenshot
            report.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            if page is not None:
                clock = time.monotonic()
                report.screenshot = self._screenshot(page, rel, screenshot_name or Path(rel).stem)
                lap("screenshot")
                self._close(page, rel, keep_page=healthy)
                lap("close")
            report.seconds = time.monotonic() - start
        if file_digest(notebook) != digest:
            report.problems.append(f"{rel} changed on disk during the browser run")
        if _checkpoint_state(notebook) != checkpoint:
            report.problems.append(f"the browser run wrote a checkpoint of {rel} into the repository")
        report.complete = True
        return report

    def close(self) -> None:
        if self._page is not None and not self._page.is_closed():
            self._page.close()
        self._page = None

    def _lab_page(self):
        """The JupyterLab page, loaded once and reused for every notebook (a fresh one after a failure)."""
        if self._page is not None and not self._page.is_closed():
            return self._page
        page = self.context.new_page()
        workspace = f"t{secrets.token_hex(4)}"  # a fresh workspace: no layout gets restored
        page.goto(self.server.url(f"lab/workspaces/{workspace}"), wait_until="domcontentloaded")
        page.wait_for_function("() => !!window.jupyterapp", timeout=self.open_timeout * 1000)
        page.evaluate("() => { window.jupyterapp.restored.then(() => { window.titnRestored = true; }); }")
        page.wait_for_function("() => window.titnRestored === true", timeout=self.open_timeout * 1000)
        page.evaluate(PROBE_JS)
        self._page = page
        return page

    def _open(self, page, rel: str) -> None:
        """Open the notebook as a student does from the file browser, and wait for an idle kernel."""
        page.evaluate("p => window.titnProbe.open(p)", rel)
        self._wait(
            page, rel, lambda s: s["panel"] and s["ready"] and s["kernel"] == "idle",
            self.open_timeout, "open the notebook and start its kernel", accept_dialogs=True,
        )  # fmt: skip
        page.evaluate("p => window.titnProbe.listen(p)", rel)

    def _close(self, page, rel: str, *, keep_page: bool) -> None:
        """Close the notebook without saving and shut its kernel down."""
        try:
            page.evaluate("p => window.titnProbe.close(p)", rel)
        except Exception:  # noqa: BLE001 - a broken page is replaced below; the server stops its kernels
            keep_page = False
        self.server.remember_descendants()
        if not keep_page:
            page.close()
            self._page = None

    def _run_all(self, page, rel: str, report: NotebookReport) -> None:
        start = time.monotonic()
        page.evaluate("p => window.titnProbe.runAll(p)", rel)
        try:
            self._wait(
                page, rel,
                lambda s: s["run"] and s["run"]["done"] and s["kernel"] == "idle" and s["pending"] == 0,
                self.run_timeout, "run all cells", quiet=0.75,
            )  # fmt: skip
        except TimeoutError as exc:
            report.problems.append(str(exc))
            # Interrupt the kernel (as the stop button does) and let the run end; a kernel that
            # ignores the interrupt aborts this notebook (its page is replaced).
            page.evaluate("p => window.titnProbe.interrupt(p)", rel)
            self._wait(
                page, rel, lambda s: s["run"]["done"] and s["kernel"] == "idle" and s["pending"] == 0,
                30, "stop the run after interrupting the kernel", quiet=0.5,
            )  # fmt: skip
        report.run_seconds = time.monotonic() - start

    def _wait_for_widgets(self, page, rel: str, timeout: float = 15.0) -> None:
        """Widget views render asynchronously after the kernel is idle; give them a moment."""
        deadline = time.monotonic() + timeout
        while page.evaluate("p => window.titnProbe.widgetsLoading(p)", rel) and time.monotonic() < deadline:
            time.sleep(0.2)

    def _wait(
        self, page, rel, ready, timeout: float, what: str, *, accept_dialogs: bool = False, quiet: float = 0.0
    ) -> dict:
        """Poll the page until `ready(state)`; with `quiet`, it must also stay ready, with no kernel
        round trip, for that many seconds (messages queued behind the run get handled first)."""
        deadline = time.monotonic() + timeout
        state, since = {}, None
        while time.monotonic() < deadline:
            previous, state = state, page.evaluate("p => window.titnProbe.state(p)", rel)
            if state.get("dialog"):
                if not accept_dialogs:
                    raise RuntimeError(f"unexpected JupyterLab dialog while waiting to {what}: {state['dialog']!r}")
                page.locator(".jp-Dialog .jp-mod-accept").first.click()  # e.g. "Select Kernel": the default
            elif ready(state):
                if since is None or state.get("idle") != previous.get("idle"):
                    since = time.monotonic()
                if time.monotonic() - since >= quiet:
                    return state
            else:
                since = None
            time.sleep(0.25 if not quiet else min(0.25, quiet / 2))
        raise TimeoutError(f"could not {what} within {timeout:.0f} s (last state: {state})")

    # -- what the page shows ----------------------------------------------------------------
    @staticmethod
    def _shown_errors(cells: list[dict]) -> list[tuple[int, dict]]:
        return [(c["index"], e) for c in cells for e in c["errors"] + c["nestedErrors"]]

    def _check_outputs(self, report: NotebookReport) -> None:
        for index, err in self._shown_errors(report.cells):
            cell = report.cells[index]
            if err in cell["errors"] and RAISES_EXCEPTION in cell["tags"]:
                continue  # shown on purpose (nbval accepts it too; Run All goes on past it)
            where = "an explorer's output" if err not in cell["errors"] else "its output"
            report.problems.append(
                f"cell {index} shows an error in {where}: {err['ename']}: {err['evalue']} "
                f"(cell starts {_first_line(report.cells[index]['source'])!r})"
            )
        for cell in report.cells:
            if cell["type"] != "code" or not cell["source"].strip():
                continue
            if cell["count"] is None:
                report.problems.append(f"cell {cell['index']} was not run ({_first_line(cell['source'])!r})")
            for out in cell["outputs"]:
                if out["mime"] == "application/vnd.jupyter.stderr" and out["type"] == "stream":
                    report.stderr_outputs += 1
                # A widget the kernel closed (e.g. a tqdm bar with leave=False) leaves an empty output:
                # that is what the student sees, not a failure. A view that failed to render shows
                # JupyterLab's "Error displaying widget" text, or the widget's plain-text fallback.
                if out["widgetView"] and not out["widgetRendered"] and out["text"].strip():
                    report.problems.append(
                        f"cell {cell['index']} has a widget that did not render; the page shows {out['text']!r}"
                    )

    def _check_unshown_kernel_errors(self, page, rel: str, report: NotebookReport) -> None:
        """Errors the kernel sent that no output shows (e.g. from a widget callback): JupyterLab
        puts them in its Log Console only, where a student rarely looks."""
        self._wait(page, rel, lambda s: s["kernel"] == "idle", self.change_timeout, "let the kernel settle", quiet=0.5)
        now = page.evaluate("p => window.titnProbe.inspect(p)", rel)
        seen = {(e["ename"], e["evalue"]) for _, e in self._shown_errors(report.cells) + self._shown_errors(now)}
        seen |= report.reported_kernel_errors
        hidden = {}
        for e in page.evaluate("p => window.titnProbe.iopubErrors(p)", rel):
            if (e["ename"], e["evalue"]) not in seen:
                hidden.setdefault((e["ename"], e["evalue"], e["parent"]), 0)
                hidden[(e["ename"], e["evalue"], e["parent"])] += 1
        for (ename, evalue, parent), n in hidden.items():
            report.problems.append(
                f"the kernel raised {ename}: {evalue} ({n}x, while handling a {parent}) and no output shows it "
                "(only the Log Console does)"
            )

    # -- explorers ---------------------------------------------------------------------------
    def _controls(self, cell) -> list[tuple[str, object]]:
        controls = []
        enabled_handles = ".widget-slider .noUi-target:not([disabled]) .noUi-handle"
        controls += [(SLIDER, h) for h in cell.locator(enabled_handles).all()]
        controls += [(DROPDOWN, s) for s in cell.locator(".widget-dropdown select:not([disabled])").all()]
        controls += [(TOGGLE_BUTTONS, g) for g in cell.locator(".widget-toggle-buttons").all()]
        controls += [(RADIO_BUTTONS, g) for g in cell.locator(".widget-radio-box").all()]
        controls += [(CHECKBOX, c) for c in cell.locator(".widget-checkbox input[type=checkbox]:not([disabled])").all()]
        return controls

    @staticmethod
    def _label(element) -> str:
        return element.evaluate(
            "n => { const box = n.closest('.widget-inline-hbox') || n.parentElement;"
            " const texts = Array.from(box ? box.querySelectorAll('.widget-label, .widget-label-basic') : [])"
            "   .map(l => l.textContent.replace(/\\u200b/g, '').trim()).filter(Boolean);"
            " return texts.length ? texts[0] : ''; }"
        )

    def _move(self, kind: str, element) -> tuple[str, str]:
        """Move one control to a non-default value through the page; return its (before, after) value."""
        def value() -> str:
            return element.evaluate(CONTROL_VALUE_JS[kind])

        before = value()
        for attempt in range(2 if kind == SLIDER else 1):
            if kind == SLIDER:  # one step up; at its maximum already, one step down
                element.press("ArrowRight" if attempt == 0 else "ArrowLeft")
            elif kind == DROPDOWN:
                current, n = element.evaluate("s => [s.selectedIndex, s.options.length]")
                element.select_option(index=1 if current == 0 and n > 1 else 0)
            elif kind in (TOGGLE_BUTTONS, RADIO_BUTTONS):
                selector = "button:not(.mod-active)" if kind == TOGGLE_BUTTONS else "input[type=radio]:not(:checked)"
                others = element.locator(f"{selector}:not([disabled])")
                if others.count():
                    others.first.click()
            elif kind == CHECKBOX:
                element.click()
            deadline = time.monotonic() + 5
            while value() == before and time.monotonic() < deadline:
                time.sleep(0.05)
            if value() != before:
                break
        return before, value()

    def _settle(self, page, rel: str, index: int, before_fp: dict, before_idle: int) -> dict:
        """Wait until the kernel has answered the change (or the output changed), then until stable."""
        deadline = time.monotonic() + self.change_timeout
        while time.monotonic() < deadline:
            state = page.evaluate("p => window.titnProbe.state(p)", rel)
            fp = page.evaluate("([p, i]) => window.titnProbe.fingerprint(p, i)", [rel, index])
            if (state["idle"] > before_idle and state["kernel"] == "idle") or fp["hash"] != before_fp["hash"]:
                break
            time.sleep(0.1)
        else:
            raise TimeoutError(f"no answer from the kernel within {self.change_timeout:.0f} s")
        previous, stable_since = None, time.monotonic()
        while time.monotonic() < deadline:
            state = page.evaluate("p => window.titnProbe.state(p)", rel)
            fp = page.evaluate("([p, i]) => window.titnProbe.fingerprint(p, i)", [rel, index])
            if fp != previous or state["kernel"] != "idle":
                previous, stable_since = fp, time.monotonic()
            elif time.monotonic() - stable_since >= 0.4:
                return fp
            time.sleep(0.1)
        return previous

    @staticmethod
    def _wait_for_change(page, rel: str, index: int, before_fp: dict, *, grace: float) -> dict:
        """Poll the cell's output fingerprint for up to ``grace`` seconds; return it once it differs."""
        deadline = time.monotonic() + grace
        fp = before_fp
        while time.monotonic() < deadline:
            fp = page.evaluate("([p, i]) => window.titnProbe.fingerprint(p, i)", [rel, index])
            if fp["hash"] != before_fp["hash"]:
                break
            time.sleep(0.2)
        return fp

    def _exercise(self, page, rel: str, cell: dict, report: NotebookReport) -> None:
        index = cell["index"]
        head = _first_line(cell["source"])
        locator = page.locator(f'[data-titn-notebook="{rel}"] [data-titn-cell="{index}"] .jp-Cell-outputArea')
        if not cell["controls"]:
            report.problems.append(f"cell {index} is an explorer but shows no control ({head!r})")
            return
        explorer = ExplorerReport(cell=index)
        report.explorers.append(explorer)
        for kind, element in self._controls(locator):
            label = self._label(element)
            name = f"{kind} {label!r}" if label else kind
            element.scroll_into_view_if_needed()
            before_fp = page.evaluate("([p, i]) => window.titnProbe.fingerprint(p, i)", [rel, index])
            before_idle = page.evaluate("p => window.titnProbe.state(p)", rel)["idle"]
            errors_before = len(page.evaluate("p => window.titnProbe.iopubErrors(p)", rel))
            old, new = self._move(kind, element)
            if old == new:
                report.problems.append(f"cell {index}: the {name} did not move from {old!r} ({head!r})")
                continue
            try:
                after_fp = self._settle(page, rel, index, before_fp, before_idle)
            except TimeoutError as exc:
                report.problems.append(f"cell {index}: after moving the {name} to {new!r}: {exc}")
                continue
            explorer.moved.append(f"{name}: {old} -> {new}")
            shown = page.evaluate("([p, i]) => window.titnProbe.cellErrors(p, i)", [rel, index])
            new_errors = page.evaluate("p => window.titnProbe.iopubErrors(p)", rel)[errors_before:]
            report.reported_kernel_errors |= {(e["ename"], e["evalue"]) for e in shown + new_errors}
            if shown:
                err = shown[0]
                report.problems.append(
                    f"cell {index}: moving the {name} to {new!r} shows an error: "
                    f"{err['ename']}: {err['evalue']} ({head!r})"
                )
                break  # the explorer is broken; its other controls would only repeat the error
            if new_errors:
                err = new_errors[0]
                report.problems.append(
                    f"cell {index}: moving the {name} to {new!r} raises an error that only the Log Console shows: "
                    f"{err['ename']}: {err['evalue']} ({head!r})"
                )
                break
            if after_fp["hash"] == before_fp["hash"]:
                # The kernel can go idle a moment before the browser has drawn the new figure (a large
                # PNG on a loaded machine): give the page a bounded grace period before calling it stuck.
                after_fp = self._wait_for_change(page, rel, index, before_fp, grace=5.0)
            if after_fp["hash"] == before_fp["hash"]:
                report.problems.append(
                    f"cell {index}: moving the {name} from {old!r} to {new!r} did not change the output ({head!r})"
                )

    # -- screenshots ------------------------------------------------------------------------------
    def _screenshot(self, page, rel: str, name: str) -> Path | None:
        """The whole notebook in one image: the viewport is stretched to the notebook's height."""
        target = self.screenshot_dir / f"{name}.png"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            size = page.viewport_size or {"width": 1280, "height": 900}
            height = page.evaluate("p => window.titnProbe ? window.titnProbe.prepareScreenshot(p) : 0", rel) or 0
            tall = int(min(max(size["height"], height + 200), 15000))
            page.set_viewport_size({"width": size["width"], "height": tall})
            page.wait_for_timeout(500)
            page.evaluate("p => window.titnProbe && window.titnProbe.prepareScreenshot(p)", rel)
            page.wait_for_timeout(200)
            page.screenshot(path=str(target))
            page.set_viewport_size(size)
            return target
        except Exception:  # noqa: BLE001 - a failed screenshot must not hide the real problem
            return None


def launch_chromium(playwright, executable: str, profile_dir: Path):
    """Headless system Chromium with a fresh profile; Playwright downloads no browser of its own.

    HOME-based folders (crash reports, dconf cache) point into the profile folder too, so the
    user's ~/.config and ~/.cache stay untouched."""
    profile_dir = Path(profile_dir)
    env = dict(os.environ, XDG_CONFIG_HOME=str(profile_dir / "xdg-config"),
               XDG_CACHE_HOME=str(profile_dir / "xdg-cache"))
    return playwright.chromium.launch_persistent_context(
        str(profile_dir / "user-data"),
        executable_path=executable,
        env=env,
        headless=True,
        args=list(CHROMIUM_ARGS),
        viewport={"width": 1280, "height": 900},
        timeout=60_000,
    )


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="titn-edu-lab-"))
