"""The explorer page in a real browser (headless Debian chromium driven through selenium + chromedriver).

Types a prompt, checks the heat-map cells against a direct decode, hovers for the top-k, tracks a target,
compares two lenses, moves the steering slider and checks the new predictions. The screenshot goes to
``$LMSCOPE_TEST_ARTIFACTS`` (default ``build/test-artifacts``).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from lmscope.interventions import HookedModel, Steer, save_interventions

ENABLE = ("include it with `make test BROWSER=1` (as root: apt-get installs Debian's chromium and chromium-driver; "
          "selenium is in the dev set-up), as CI does")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
PROMPT = "The capital of France is"
ARTIFACTS = Path(os.environ.get("LMSCOPE_TEST_ARTIFACTS", Path(__file__).parents[3] / "build" / "test-artifacts"))


@pytest.fixture
def browser() -> Any:
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is missing; {ENABLE}")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(f"chromium or chromedriver not found; {ENABLE}")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1500,1100", "--disable-extensions", "--no-first-run"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def wait_ready(driver: Any, after_seq: int, timeout: float = 90.0) -> int:
    """Wait until a decode newer than ``after_seq`` has been drawn; its sequence number."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state, seq = driver.execute_script("return [document.body.dataset.state, +document.body.dataset.seq]")
        if state == "ready" and seq > after_seq:
            return int(seq)
        if state == "error":
            raise AssertionError(driver.find_element("id", "status").text)
        time.sleep(0.1)
    raise AssertionError("the page did not finish decoding")


def last_column(driver: Any, lens: str = "logit") -> dict[str, str]:
    """reading -> top-1 token (raw, from data-token) of the last position in the panel of ``lens``."""
    return driver.execute_script("""
        const out = {};
        const cells = document.querySelectorAll(`.panel[data-lens="${arguments[0]}"] td.cell`);
        let last = -1;
        cells.forEach((c) => { last = Math.max(last, +c.dataset.pos); });
        cells.forEach((c) => { if (+c.dataset.pos === last) out[c.dataset.reading] = c.dataset.token; });
        return out;""", lens)


@pytest.mark.slow
def test_explorer_in_chromium(browser: Any, smollm: HookedModel, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    from lmscope.lens.lenses import LogitLens
    from lmscope.lens.serve.runner import ServerThread
    from lmscope.lens.serve.state import ServerState, read_interventions
    from lmscope.lens.training.fit import default_lens

    model = smollm
    berlin = model.token_id(" Berlin")
    direction = model.unembed_weight[berlin].detach().float()
    save_interventions([Steer("resid_post.18", direction / direction.norm(), 10.0)], tmp_path / "berlin")
    logit, tuned = LogitLens(model), default_lens(model, progress=False)
    state = ServerState(model, {"logit": logit, "tuned": tuned},
                        steering={"berlin": read_interventions(tmp_path / "berlin")})
    expected = logit.decode(PROMPT, top_k=5)
    steered_scale = 10.0  # the slider's value; the saved Steer has scale 10: x100 in all (|resid_post.18| ~ 180)
    with model.apply(Steer("resid_post.18", direction / direction.norm(), 10 * steered_scale)):
        steered = logit.decode(PROMPT, top_k=5)
    assert expected.top_tokens[-1][-1][0] != steered.top_tokens[-1][-1][0]  # the vector does move the output

    with ServerThread(state) as server:
        driver = browser
        driver.get(server.url + "/")
        seq = wait_ready(driver, 0)  # the page decodes its placeholder prompt on load
        box = driver.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys(PROMPT)
        seq = wait_ready(driver, seq)
        col = last_column(driver)
        assert col == {r: expected.top_tokens[i][-1][0] for i, r in enumerate(expected.readings)}
        assert col["resid_post.29"] == " Paris"
        # every cell shows its token visibly: no blank cell for a whitespace token
        shown = driver.execute_script(
            "return [...document.querySelectorAll('.panel td.cell')].map(c => [c.dataset.token, c.textContent])")
        assert len(shown) == len(expected.readings) * len(expected.positions)
        assert all(text.strip() for _, text in shown)
        assert all(text.startswith("␣") for tok, text in shown if tok.startswith(" "))
        assert any(tok.startswith(" ") for tok, _ in shown)

        last = expected.positions[-1]
        cell = driver.find_element(By.CSS_SELECTOR, f'.panel td.cell[data-reading="resid_post.29"][data-pos="{last}"]')
        ActionChains(driver).move_to_element(cell).perform()
        tip = driver.find_element(By.ID, "tooltip")
        assert tip.is_displayed() and "␣Paris" in tip.text and "1." in tip.text and "entropy" in tip.text

        driver.find_element(By.ID, "target").send_keys("␣Paris")
        seq = wait_ready(driver, seq)
        rank = driver.execute_script("return document.querySelector("
                                     f"'.panel td.cell[data-reading=\"resid_post.29\"][data-pos=\"{last}\"]')"
                                     ".dataset.rank")
        assert rank == "1"
        assert driver.find_elements(By.CSS_SELECTOR, ".panel svg.ranks polyline")

        driver.find_element(By.ID, "compare").click()
        seq = wait_ready(driver, seq)
        lenses = [p.get_attribute("data-lens") for p in driver.find_elements(By.CSS_SELECTOR, ".panel")]
        assert lenses == ["logit", "tuned"]
        tuned_expected = tuned.decode(PROMPT, top_k=5)
        assert last_column(driver, "tuned") == {r: tuned_expected.top_tokens[i][-1][0]
                                                for i, r in enumerate(tuned_expected.readings)}

        driver.execute_script("const s = document.getElementById('scale'); s.value = arguments[0];"
                              "s.dispatchEvent(new Event('input'));", str(steered_scale))
        seq = wait_ready(driver, seq)
        col = last_column(driver)
        assert col == {r: steered.top_tokens[i][-1][0] for i, r in enumerate(steered.readings)}
        assert col["resid_post.29"] == steered.top_tokens[-1][-1][0] != " Paris"
        assert "steered ×10" in driver.find_element(By.ID, "status").text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "serve-explorer.png"))
        assert (ARTIFACTS / "serve-explorer.png").stat().st_size > 10_000
    assert torch.is_tensor(direction)
