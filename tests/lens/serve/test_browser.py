"""The workbench in a real browser (headless Debian chromium driven through selenium + chromedriver), on SmolLM2.

Every view renders and its numbers are the library's (lens cells against direct decodes), clicks drill down into
the selection panel (lens cell, head, MLP, graph node), toggling an ablation changes the lens view (to the direct
decode under that ablation), steering shows as active, the URL restores a view, and every view exports as SVG,
PNG and JSON. Screenshots of each view go to ``$LMSCOPE_SCREENSHOTS`` (default ``build/test-artifacts``; the
ones in ``docs/images/`` are these, taken with ``LMSCOPE_SCREENSHOTS=docs/images``). Gemma 3 renders its light
views here too; its heavy views (patching, graph, flow) run through the API tier on a 2-core machine
(``test_workbench_api.py::test_ioi_pairs_and_views_on_gemma3``), where a browser round adds minutes.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from lmscope.interventions import Ablate, HookedModel, Steer, save_interventions

ENABLE = ("include it with `make test BROWSER=1` (as root: apt-get installs Debian's chromium and chromium-driver; "
          "selenium is in the dev set-up), as CI does")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
PROMPT = "The capital of France is"
ROOT = Path(__file__).parents[3]
SHOTS = Path(os.environ.get("LMSCOPE_SCREENSHOTS", ROOT / "build" / "test-artifacts"))
SHOTS = SHOTS if SHOTS.is_absolute() else ROOT / SHOTS


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is missing; {ENABLE}")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(f"chromium or chromedriver not found; {ENABLE}")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1000", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


class Page:
    """The page in ``driver``: waits for its renders and reads what it drew."""

    def __init__(self, driver: Any, url: str) -> None:
        self.d, self.url, self.seq = driver, url, 0

    def open(self, fragment: str = "", timeout: float = 120) -> None:
        self.d.get("about:blank")  # a new document: another hash alone would not load the page again
        self.d.get(self.url + "/" + fragment)
        self.seq = 0
        self.wait(timeout)

    def js(self, script: str, *args: Any) -> Any:
        return self.d.execute_script(script, *args)

    def wait(self, timeout: float = 120) -> None:
        """Until a render newer than the last one is drawn (an error on the page fails the test)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state, seq = self.js("return [document.body.dataset.state, +document.body.dataset.seq]")
            if state == "error":
                raise AssertionError(self.d.find_element("id", "status").text)
            if state == "ready" and seq > self.seq:
                self.seq = seq
                return
            time.sleep(0.1)
        raise AssertionError(f"the page did not finish: {self.d.find_element('id', 'status').text}")

    def wait_detail(self, kind: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            k, state = self.js("const b = document.getElementById('detail-body');"
                               "return [b.dataset.kind, b.dataset.state]")
            if k == kind and state == "ready":
                return
            assert state != "error", self.d.find_element("id", "detail-body").text
            time.sleep(0.1)
        raise AssertionError(f"the selection panel did not show a {kind}")

    def tab(self, view: str, timeout: float = 180) -> None:
        self.d.find_element("css selector", f'#tabs button[data-view="{view}"]').click()
        self.wait(timeout)

    def set(self, element_id: str, value: str, event: str = "input") -> None:
        self.js("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                "e.dispatchEvent(new Event(arguments[2]));", element_id, value, event)

    def click(self, selector: str) -> None:
        self.js("arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))",
                self.d.find_element("css selector", selector))

    def last_column(self, lens: str = "logit") -> dict[str, str]:
        """reading -> top-1 token (raw, from data-token) at the last position of the panel of ``lens``."""
        return self.js("""
            const out = {};
            const cells = [...document.querySelectorAll(`.panel[data-lens="${arguments[0]}"] g.cell`)];
            const last = Math.max(...cells.map((c) => +c.dataset.pos));
            cells.forEach((c) => { if (+c.dataset.pos === last) out[c.dataset.reading] = c.dataset.token; });
            return out;""", lens)

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.js("window.scrollTo(0, 0)")
        assert self.d.save_screenshot(str(SHOTS / f"{name}.png"))

    def exports(self) -> tuple[str, Any, int]:
        """The shown view as SVG text, its JSON data, and the size of its PNG."""
        svg, data = self.js('return [exportData("svg"), exportData("json")]')
        size = self.d.execute_async_script(
            "const done = arguments[0]; pngOf(exportData('svg')).then((b) => done(b.size), () => done(-1));")
        import json

        return svg, json.loads(data), size


def column(traj: Any) -> dict[str, str]:
    return {r: traj.top_tokens[i][-1][0] for i, r in enumerate(traj.readings)}


@pytest.fixture(scope="module")
def served_smollm(smollm: HookedModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from lmscope.lens.lenses import LogitLens
    from lmscope.lens.serve.runner import ServerThread
    from lmscope.lens.serve.state import ServerState, read_interventions
    from lmscope.lens.training.fit import default_lens

    folder = tmp_path_factory.mktemp("steer") / "berlin"
    berlin = smollm.unembed_weight[smollm.token_id(" Berlin")].detach().float()
    save_interventions([Steer("resid_post.18", berlin / berlin.norm(), 10.0)], folder)
    state = ServerState(smollm, {"logit": LogitLens(smollm), "tuned": default_lens(smollm, progress=False)},
                        steering={"berlin": read_interventions(folder)})
    with ServerThread(state) as server:
        yield server, state


@pytest.mark.slow
def test_lens_view_cells_drill_down_ablation_and_steering(browser: Any, served_smollm: Any) -> None:
    server, state = served_smollm
    page = Page(browser, server.url)
    page.open()
    logit, tuned = state.lenses["logit"], state.lenses["tuned"]
    assert page.last_column("logit") == column(logit.decode(PROMPT))
    assert page.last_column("tuned") == column(tuned.decode(PROMPT))
    shown = page.js("return [...document.querySelectorAll('.panel g.cell')].map(c => [c.dataset.token, "
                    "c.querySelector('text').textContent])")
    assert all(text.startswith("␣") for tok, text in shown if tok.startswith(" ")) and len(shown) == 2 * 30 * 5

    page.set("target", "␣Paris")
    page.wait()
    assert page.js("return document.querySelector('.panel[data-lens=\"logit\"] g.cell[data-reading=\"resid_post.29\"]"
                   "[data-pos=\"4\"]').dataset.rank") == "1"
    page.set("lens-colour", "rank", "change")
    page.wait()
    page.click('.panel[data-lens="logit"] g.cell[data-reading="resid_post.20"][data-pos="4"]')
    page.wait_detail("cell")
    from lmscope.lens.changes import layer_change

    change = layer_change(logit, PROMPT, "resid_post.20", 4, 8)
    promoted = page.js("return [...document.querySelectorAll('#detail-body table.promoted tr')]"
                       ".map(r => r.dataset.token)")
    assert promoted == [t for _, t, _ in change.promoted]
    page.shot("workbench-lens")

    heads = [(23, 4), (26, 0), (27, 3), (29, 1)]  # zero-ablated, these move the output at some layer
    page.set("ablate", ", ".join(f"{layer}.{head}" for layer, head in heads))
    page.wait()
    with state.model.apply(Ablate(heads=heads)):
        ablated = column(logit.decode(PROMPT))
    assert page.last_column("logit") == ablated != column(logit.decode(PROMPT))
    assert "ablate (zero) L23H4, L26H0, L27H3, L29H1" in page.d.find_element("id", "active").text

    from lmscope.lens.serve.steering import NormTable

    page.set("ablate", "")
    page.set("steer", "berlin", "change")
    page.set("scale", "1.5")
    page.wait()
    v = state.steering["berlin"][0].vector
    with state.model.apply(Steer("resid_post.18", v / v.norm() * NormTable(state.model).norm("resid_post.18"), 1.5)):
        steered = column(logit.decode(PROMPT))
    assert page.last_column("logit") == steered and steered["resid_post.29"] != " Paris"
    assert "steer berlin at resid_post.18: 1.5 x typical residual norm" in page.d.find_element("id", "active").text


@pytest.mark.slow
def test_attention_and_attribution_views_drill_down(browser: Any, served_smollm: Any) -> None:
    server, state = served_smollm
    page = Page(browser, server.url)
    page.open("#v=attention&al=20")
    assert page.js("return document.querySelectorAll('#att-grid g.head').length") == state.model.n_heads
    page.click('#att-grid g.head[data-head="3"]')
    page.wait_detail("head")
    assert page.js("return document.querySelector('#att-big svg').dataset.head") == "3"
    assert page.js("return document.querySelector('#att-grid g.head.locked').dataset.head") == "3"
    page.shot("workbench-attention")
    svg, data, png = page.exports()
    assert svg.startswith("<svg") and "<image" in svg and data["layer"] == 20 and png > 5000

    page.tab("attribution")
    from lmscope.probes.attribution import attribute

    a = attribute(state.model, PROMPT, " Paris", per_position=False)
    assert page.js("return document.querySelectorAll('#dla-map g.cell').length") == 30 * 9
    value = float(page.js("return document.querySelector('#dla-map g.cell[data-layer=\"23\"][data-head=\"4\"]')"
                          ".dataset.value"))
    assert value == pytest.approx(float(a.heads[23, 4]), abs=1e-4)
    page.click('#dla-map g.cell[data-layer="23"][data-head="4"]')
    page.wait_detail("head")
    shown = float(page.js("return document.querySelector('#detail-body p.dla').dataset.value"))
    assert shown == pytest.approx(float(a.heads[23, 4]), abs=1e-4)
    page.click('#dla-bars g.bar[data-row="mlp 29"]')
    page.wait_detail("mlp")
    assert page.js("return document.querySelectorAll('#detail-body table.neurons tr[data-neuron]').length") == 10
    page.shot("workbench-attribution")
    page.click('#dla-map g.cell[data-layer="23"][data-head="4"]')
    page.wait_detail("head")
    page.click("#detail-ablate")  # the panel's button toggles the head's ablation; every view follows
    page.wait()
    assert page.d.find_element("id", "ablate").get_attribute("value") == "23.4"
    cell = "#dla-map g.cell[data-layer='23'][data-head='4']"
    assert page.js(f'return document.querySelector("{cell}").dataset.value') == "0"


@pytest.mark.slow
def test_the_url_restores_a_view(browser: Any, served_smollm: Any) -> None:
    server, _ = served_smollm
    page = Page(browser, server.url)
    page.open("#v=attention&al=9&p=One+two+one+two+one&abl=9.1&sc=1&slayer=9&shead=5&skind=head")
    assert page.js("return document.querySelector('#tabs button.on').dataset.view") == "attention"
    assert page.d.find_element("id", "prompt").get_attribute("value") == "One two one two one"
    assert page.d.find_element("id", "att-scores").is_selected()
    assert page.js("return document.querySelector('#att-grid g.head.locked').dataset.head") == "5"
    assert page.js("return document.querySelector('#att-grid g.head.ablated').dataset.head") == "1"
    page.wait_detail("head")
    first = page.js("return location.hash")
    page.open(first)  # the hash the page wrote restores the same state
    assert page.js("return location.hash") == first


@pytest.mark.slow
def test_patching_and_graph_views_on_an_ioi_pair(browser: Any, served_smollm: Any) -> None:
    server, state = served_smollm
    page = Page(browser, server.url)
    page.open()
    page.click("#ioi")
    page.wait()
    assert page.d.find_element("id", "pair").is_selected()
    page.tab("patching", timeout=600)
    assert page.js("return document.getElementById('patch-progress').value") == 1
    assert page.js("return document.querySelectorAll('#patch-resid g.cell').length") == 30 * 14
    assert page.js("return document.querySelectorAll('#patch-heads g.cell').length") == 30 * 9
    page.click('#patch-heads g.cell[data-layer="20"][data-head="0"]')
    page.wait_detail("head")
    page.shot("workbench-patching")
    svg, data, _ = page.exports()
    assert data["state"] == "done" and len(data["result"]["resid_pre"]["values"]) == 30

    page.tab("graph", timeout=600)
    edges = lambda: page.js("return document.querySelectorAll('#graph-svg path.edge').length")  # noqa: E731
    before = edges()
    page.set("threshold", "0.02")
    assert edges() > before > 0
    page.set("threshold", "0.1")
    page.click('#graph-svg g.node.head:not(.faded)')
    page.wait_detail("head")
    page.shot("workbench-graph")
    page.click('#graph-svg g.node.mlp:not(.faded)')
    page.wait_detail("mlp")
    page.set("graph-mode", "flow", "change")
    page.wait(600)
    assert page.js("return document.querySelectorAll('#graph-svg svg.flow g.node').length") > 5
    page.click("#graph-svg g.node")
    page.wait_detail("cell")
    page.shot("workbench-flow")


@pytest.mark.slow
def test_gemma3_light_views_render(browser: Any, gemma3: HookedModel) -> None:
    from lmscope.lens.lenses import LogitLens
    from lmscope.lens.serve.runner import ServerThread
    from lmscope.lens.serve.state import ServerState

    prompt = "The Eiffel Tower is in the city of"
    lens = LogitLens(gemma3)
    with ServerThread(ServerState(gemma3, {"logit": lens})) as server:
        page = Page(browser, server.url)
        page.open("#p=" + prompt.replace(" ", "+"), timeout=300)
        assert page.last_column() == column(lens.decode(prompt))
        page.tab("attention", timeout=300)
        assert page.js("return document.querySelectorAll('#att-grid g.head').length") == gemma3.n_heads
        page.tab("attribution", timeout=300)
        assert page.js("return document.querySelectorAll('#dla-map g.cell').length") == 18 * gemma3.n_heads
        page.click('#dla-bars g.bar[data-row="mlp 17"]')
        page.wait_detail("mlp", timeout=300)
