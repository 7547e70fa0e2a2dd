"""aaer report --html: report.html's table (one row per run, the numbers of results.json),
its escaping, its embedded plots and relative links, read back with the standard library's
HTML parser; and the page in a real headless Chromium (Debian's chromium, driven by
Playwright): sorting by a click on a header, the method filter, the plots rendered."""
import base64
import json
import os
import shutil
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest

from aaer.cli import main
from aaer.reporting.html import render_html
from aaer.reporting.report import write_report
from aaer.runs import load_run
from tests.helpers.run_dirs import CO_RUN, EVAL, OK_RUN, make_run

EVIL_FOLDER = "<img src=x onerror=alert(1)>"
EVIL_DATASET = "</td><script>alert(2)</script>&amp;"
PNG = b"\x89PNG\r\n\x1a\n"
HEADERS = ["run", "method", "model", "data set", "eps", "norm", "seed", "clean (%)", "PGD (%)",
           "AutoAttack (%)", "CO outcome", "epochs", "wall time", "peak memory (GB)"]


def evaluation(clean, pgd, aa=None):
    ev = json.loads(json.dumps(EVAL))
    ev["results"]["clean"]["acc"], ev["results"]["pgd"]["acc"] = clean, pgd
    if aa is not None:
        ev["results"]["autoattack"] = {"acc": aa, "version": "standard"}
    return ev


def finish(d, ev=None, cost=None, **monitor):
    """Add an evaluation, the cost and monitor facts to a made-up run's results.json."""
    path = os.path.join(d, "results.json")
    with open(path) as f:
        res = json.load(f)
    if ev is not None:
        res["evaluation"] = ev
    if cost is not None:
        res["cost"] = {"train_seconds": cost[0], "device_hours": cost[0] / 3600,
                       "peak_memory_gb": cost[1], "memory": "peak resident set (CPU)"}
    res["monitor"].update(monitor)
    with open(path, "w") as f:
        json.dump(res, f)
    return d


def make_runs(root):
    """Five runs: three evaluated (one without AutoAttack), one not, one unfinished with a
    hostile folder and data-set name. The wall times (95 s, 123.4 s, 600 s, 8000 s) sort
    differently as numbers and as the text shown ('10.0 min' < '2.1 min' < '2.22 h' <
    '95.0 s')."""
    runs = os.path.join(root, "runs")
    a = finish(make_run(os.path.join(runs, "rs-fgsm"), "rs-fgsm", CO_RUN),
               evaluation(0.81, 0.4567, 0.4123), (95.0, 0.512))
    b = finish(make_run(os.path.join(runs, "rs-aaer"), "rs-aaer", OK_RUN),
               evaluation(0.79, 0.50, 0.47), (600.0, 1.25), outcome="no CO",
               outcome_kind="no-co")
    c = finish(make_run(os.path.join(runs, "n-aaer"), "n-aaer", OK_RUN),
               evaluation(0.80, 0.48), (8000.0, 12.0))
    d = make_run(os.path.join(runs, "fgsm"), "fgsm", CO_RUN)        # no evaluation, no cost
    e = make_run(os.path.join(runs, EVIL_FOLDER), "n-fgsm", OK_RUN)
    with open(os.path.join(e, "config.json")) as f:
        cfg = json.load(f)
    cfg["dataset"] = EVIL_DATASET                  # a custom data set may have any name
    with open(os.path.join(e, "config.json"), "w") as f:
        json.dump(cfg, f)
    os.remove(os.path.join(e, "results.json"))                     # still training
    return [a, b, c, d, e]


class Page(HTMLParser):
    """Every tag with its attributes, and the table's header and body cells."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags, self.heads, self.rows, self._cell = [], [], [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = {"tag": tag, "text": "", **attrs}

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            (self.heads if tag == "th" else self.rows[-1]).append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data

    @property
    def body(self):
        return [r for r in self.rows if r]


def row_texts(page):
    return {r[0]["text"]: [c["text"] for c in r] for r in page.body}


@pytest.fixture
def report(tmp_path):
    dirs = make_runs(str(tmp_path))
    out = str(tmp_path / "out")
    rep = write_report(dirs, out, html=True)
    with open(rep["html"], encoding="utf-8") as f:
        return rep, dirs, out, f.read()


def test_one_row_per_run_with_the_numbers_of_results_json(report):
    rep, dirs, out, text = report
    assert rep["html"] == os.path.join(out, "report.html")
    page = Page(text)
    assert [h["text"].strip() for h in page.heads] == HEADERS
    rows = row_texts(page)
    assert len(page.body) == 5 and len(rows) == 5
    assert rows["rs-fgsm"] == ["rs-fgsm", "rs-fgsm", "small-cnn", "fashion-mnist", "76.5/255",
                               "linf", "3", "81.00", "45.67", "41.23", "CO, warned (CO epoch 4)",
                               "6/6", "95.0 s", "0.51"]
    assert rows["rs-aaer"][7:] == ["79.00", "50.00", "47.00", "no CO", "6/6", "10.0 min", "1.25"]
    assert rows["n-aaer"][7:] == ["80.00", "48.00", "-", "no CO", "6/6", "2.22 h", "12.00"]
    assert rows["fgsm"][7:] == ["-", "-", "-", "CO, warned (CO epoch 4)", "6/6", "2.1 min", "-"]
    assert rows[EVIL_FOLDER][3] == EVIL_DATASET
    assert rows[EVIL_FOLDER][10:13] == ["unfinished", "6/6", "unfinished"]
    # the sort keys are the numbers themselves; a missing value has an empty key
    by_run = {r[0]["text"]: r for r in page.body}
    assert [c["data-sort"] for c in by_run["rs-fgsm"][7:10]] == ["0.81", "0.4567", "0.4123"]
    assert by_run["n-aaer"][9]["data-sort"] == "" and by_run["fgsm"][13]["data-sort"] == ""
    assert by_run["n-aaer"][12]["data-sort"] == "8000.0"
    assert by_run["rs-fgsm"][4]["data-sort"] == repr(76.5 / 255)
    # every accuracy names its protocol
    assert by_run["rs-fgsm"][8]["title"] == ("lineage, PGD-50-10 step 2/255 (worst restart rule), "
                                             "FGSM zero start, eps 8/255, n=10000, seed 0")


def test_hostile_names_are_escaped(report, tmp_path):
    _, dirs, out, text = report
    page = Page(text)
    assert text.count("<script") == 1                      # the page's own script only
    assert [t for t, _ in page.tags].count("img") == 3       # the three plots only
    assert not [(t, a) for t, a in page.tags for k in a if k.startswith("on")]
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    assert "&lt;/td&gt;&lt;script&gt;alert(2)&lt;/script&gt;&amp;amp;" in text
    # a method name is escaped too (the registry admits none like this; the page must not care)
    run = load_run(dirs[0])
    run.label = "r"
    run.settings.method.name = "<script>x</script>"
    page_text = render_html([run], [], out)
    assert page_text.count("<script") == 1 and "&lt;script&gt;x&lt;/script&gt;" in page_text
    assert row_texts(Page(page_text))["r"][1] == "<script>x</script>"


def test_plots_are_embedded_as_png_data_uris(report):
    rep, _, out, text = report
    imgs = [a for t, a in Page(text).tags if t == "img"]
    assert [a["data-name"] for a in imgs] == ["probe_accuracy.png", "aae_count.png", "lr.png"]
    for img, path in zip(imgs, rep["plots"]):
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        data = base64.b64decode(img["src"][len(prefix):], validate=True)
        assert data[:8] == PNG and len(data) > 1000
        with open(path, "rb") as f:
            assert data == f.read()
    from PIL import Image
    import io
    w, h = Image.open(io.BytesIO(data)).size
    assert w > 100 and h > 100


def test_links_are_relative_and_reach_each_run(report):
    _, dirs, out, text = report
    tags = Page(text).tags
    hrefs = [a["href"] for t, a in tags if t == "a"]
    assert len(hrefs) == 5
    for href, d in zip(hrefs, dirs):
        assert not href.startswith("/") and ":" not in href.split("/")[0], href
        assert os.path.normpath(os.path.join(out, unquote(href))) == os.path.normpath(d)
    assert hrefs[0] == "../runs/rs-fgsm/"
    # nothing the page loads comes from elsewhere: only data: images, no stylesheet or script
    assert all(a["src"].startswith("data:") for t, a in tags if "src" in a)
    assert not [t for t, a in tags if t == "link" or (t == "script" and "src" in a)]
    assert any(t == "meta" and a.get("http-equiv") == "Content-Security-Policy" and
               "default-src 'none'" in a["content"] for t, a in tags)


def test_one_run_report_links_to_its_own_folder(tmp_path):
    d = make_run(str(tmp_path / "run"), "rs-aaer", OK_RUN)
    rep = write_report([d], html=True)
    assert rep["html"] == os.path.join(d, "report.html")
    with open(rep["html"], encoding="utf-8") as f:
        page = Page(f.read())
    assert [a["href"] for t, a in page.tags if t == "a"] == ["./"]


def test_cli_html_flag(tmp_path, capsys):
    dirs = make_runs(str(tmp_path))[:2]
    out = str(tmp_path / "cli")
    assert main(["report", *dirs, "--out", out]) == 0
    assert not os.path.exists(os.path.join(out, "report.html"))      # only when asked
    assert "html:" not in capsys.readouterr().out
    assert main(["report", *dirs, "--out", out, "--html"]) == 0
    assert f"html:   {out}/report.html" in capsys.readouterr().out
    with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
        assert len(Page(f.read()).body) == 2


# -- in a real browser -------------------------------------------------------------------

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.isfile(path):
        pytest.fail("this test needs Debian's headless Chromium at /usr/bin/chromium, which is "
                    "not installed: apt-get install -y chromium (or bash scripts/chromium.sh; "
                    "scripts/test.sh installs it)", pytrace=False)
    return path


def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("this test needs the playwright package: pip install -e '.[dev]' (or pip "
                    "install playwright; no `playwright install`: it drives Debian's chromium)",
                    pytrace=False)
    return sync_playwright


@pytest.mark.timeout(180)
def test_report_html_in_headless_chromium(report, tmp_path):
    _, dirs, out, _ = report
    exe, sync_playwright = chromium_path(), playwright_api()
    url = "file://" + os.path.join(out, "report.html")
    shot = str(tmp_path / "report_html.png")
    requests, errors, dialogs = [], [], []

    def column(page, n):
        return page.eval_on_selector_all(
            "#runs tbody tr", f"rows => rows.map(r => r.cells[{n}].textContent)")

    def visible_runs(page):
        return page.eval_on_selector_all(
            "#runs tbody tr", "rows => rows.filter(r => !r.hidden && r.offsetParent !== null)"
                              ".map(r => r.cells[0].textContent)")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 1000})
            page.set_default_timeout(20_000)
            page.on("request", lambda r: requests.append(r.url))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(url)
            page.wait_for_load_state("load")
            given = ["rs-fgsm", "rs-aaer", "n-aaer", "fgsm", EVIL_FOLDER]
            assert column(page, 0) == given
            assert page.text_content("#shown") == "5 of 5 runs"

            # PGD: best first, the runs without an evaluation last; again: reversed, still last
            page.click("#col-pgd button")
            assert column(page, 8) == ["50.00", "48.00", "45.67", "-", "-"]
            assert column(page, 0)[:3] == ["rs-aaer", "n-aaer", "rs-fgsm"]
            assert page.get_attribute("#col-pgd", "aria-sort") == "descending"
            page.click("#col-pgd button")
            assert column(page, 8) == ["45.67", "48.00", "50.00", "-", "-"]
            assert page.get_attribute("#col-pgd", "aria-sort") == "ascending"
            # wall time sorts as numbers (95 s, 2.1 min, 10.0 min, 2.22 h), not as the text shown
            page.click("#col-time button")
            assert column(page, 0)[:4] == ["rs-fgsm", "fgsm", "rs-aaer", "n-aaer"]
            assert column(page, 12)[-1] == "unfinished"
            page.click("#col-time button")
            assert column(page, 0)[:4] == ["n-aaer", "rs-aaer", "fgsm", "rs-fgsm"]
            # text columns sort as text
            page.click("#col-run button")
            assert column(page, 0) == sorted(given, key=str.lower)

            # the method filter keeps the runs whose method contains its text
            page.fill("#method-filter", "aaer")
            assert sorted(visible_runs(page)) == ["n-aaer", "rs-aaer"]
            assert page.text_content("#shown") == "2 of 5 runs"
            assert page.is_hidden("#runs tbody tr:has-text('rs-fgsm')")
            page.fill("#method-filter", "RS-")
            assert sorted(visible_runs(page)) == ["rs-aaer", "rs-fgsm"]
            page.fill("#method-filter", "")
            assert len(visible_runs(page)) == 5

            # every plot decoded and laid out
            sizes = page.eval_on_selector_all(
                "figure img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, "
                              "i.naturalHeight, i.getBoundingClientRect().width])")
            assert len(sizes) == 3
            assert all(ok and w > 100 and h > 100 and shown > 100 for ok, w, h, shown in sizes)
            # the hostile names stayed text: no element of theirs (nor a dialog, below)
            assert EVIL_DATASET in column(page, 3) and EVIL_FOLDER in column(page, 0)
            assert page.eval_on_selector_all("script", "s => s.length") == 1
            assert page.eval_on_selector_all("img", "i => i.length") == 3
            page.click("#col-autoattack button")
            page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()
    assert dialogs == [] and errors == [], (dialogs, errors)
    # the page loaded itself and nothing else (the images are data: URIs)
    assert [u for u in requests if not u.startswith("data:")] == [url]
    with open(shot, "rb") as f:
        assert f.read(8) == PNG
    artefacts = os.environ.get("AAER_TEST_ARTIFACTS")
    if artefacts:
        os.makedirs(artefacts, exist_ok=True)
        shutil.copy(shot, os.path.join(artefacts, "report_html.png"))


def test_non_finite_numbers_are_shown_as_missing(tmp_path):
    d = finish(make_run(str(tmp_path / "r"), "rs-fgsm", CO_RUN),
               evaluation(float("nan"), float("inf")), (float("nan"), float("-inf")))
    run = load_run(d)
    run.label = "r"
    row = Page(render_html([run], [], d)).body[0]
    assert [(c["text"], c["data-sort"]) for c in row[7:9]] == [("-", ""), ("-", "")]
    assert [(c["text"], c["data-sort"]) for c in row[12:]] == [("-", ""), ("-", "")]
