"""The dashboard in a real headless Chromium against a real `affina serve --auth keys`: the key
prompt, the runs, registry, lineage, request-log and playground pages, and the job flow (upload
a file, start a job, watch it finish, chat with the result, open its lineage)."""

from __future__ import annotations

import json
import re
import time
import uuid

import httpx
import openai
import pytest

TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def page(chromium, dashboard_server):
    """One tab, signed in once through the key dialog (the key lives in this tab's
    sessionStorage, as it would for a person)."""
    server, admin, _ = dashboard_server
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(server.url + "/")
    dialog = tab.locator("#key-dialog")
    dialog.wait_for(state="visible")
    tab.fill("#key-input", "aff-000000000000-not-a-key")
    tab.click("#key-submit")
    tab.locator("#key-error").wait_for(state="visible")  # refused: the dialog asks again
    assert "invalid API key" in tab.text_content("#key-error")
    tab.fill("#key-input", admin)
    tab.click("#key-submit")
    tab.locator(".stat-value").first.wait_for()
    yield tab
    context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def _until(page, script: str, timeout: float = 60.0, every: float = 0.1):
    """Poll `script` in the page until it is truthy. (Playwright's wait_for_function evaluates
    strings in the page, which the dashboard's Content-Security-Policy rightly forbids.)"""
    deadline = time.monotonic() + timeout
    while not page.evaluate(script):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {script}")
        time.sleep(every)


def _drawn(page):
    """Wait until the page shown is the one the address names, fully drawn."""
    _until(page, "(() => { const v = document.querySelector('main > .page');"
                 " return !!v && v.dataset.hash === location.hash && v.dataset.ready === '1'; })()")


def _go(page, server, hash_):
    page.goto(f"{server.url}/{hash_}")
    _drawn(page)


def test_overview_after_signing_in(page, dashboard_server):
    server, _, _ = dashboard_server
    _until(page, "document.querySelector('#session').textContent.includes('key')")
    assert page.text_content("#session").endswith(" · key " + page.evaluate(
        "sessionStorage.getItem('affina.apiKey')").split("-")[1])
    stats = page.locator(".stat").all_text_contents()
    assert any("servable runs" in s.lower() and s.startswith("2") for s in stats), stats
    assert page.locator("a[href='#/runs/alpha']").count() == 1


def test_runs_page_shows_a_runs_before_after_table_and_curve(page, dashboard_server):
    server, admin, _ = dashboard_server
    _go(page, server, "#/runs")
    page.locator("tr[data-run=alpha] a").click()
    _until(page, "location.hash === '#/runs/alpha'")
    _drawn(page)
    expected = httpx.get(f"{server.url}/dashboard/api/runs/alpha", headers={"Authorization": f"Bearer {admin}"},
                         timeout=30).json()
    loss = next(r for r in expected["evaluation"] if r["measure"] == "loss")
    row = page.locator(".eval-table tr[data-measure=loss] td").all_text_contents()
    assert row[0] == "loss" and float(row[1]) == pytest.approx(loss["before"], abs=1e-4)
    assert float(row[2]) == pytest.approx(loss["after"], abs=1e-4)
    assert page.locator(".eval-table tr[data-measure=loss] td.better").count() == 1
    # The learning curve: one polyline per series with a point per logged step.
    train = page.locator("svg.chart g.series[data-name='train loss'] circle")
    assert train.count() == len(expected["learning_curve"]["train"])
    assert page.locator("svg.chart g.series[data-name='validation loss'] circle").count() == 3
    assert "lora" in page.text_content("pre.json")  # the resolved config


def test_registry_page_shows_versions_aliases_and_decisions(page, dashboard_server):
    server, _, _ = dashboard_server
    _go(page, server, "#/registry")
    card = page.locator("section[data-model=support]")
    assert set(card.locator("h2 .badge").all_text_contents()) == {"champion → v1", "candidate → v2"}
    assert card.locator("tr[data-version='support@1'] .badge.alias").all_text_contents() == ["champion"]
    decisions = card.locator(".history-table").text_content()
    assert "refused" in decisions and "promoted" in decisions
    assert card.locator(".gates .badge.bad").count() >= 1  # the refused promotion's failed gate


def test_lineage_renders_the_graph_of_a_version(page, dashboard_server):
    server, _, _ = dashboard_server
    _go(page, server, "#/registry")
    page.locator("tr[data-version='support@1'] a", has_text="lineage").click()
    _until(page, "location.hash.startsWith('#/lineage?ref=')")
    _drawn(page)
    kinds = page.locator("svg.lineage g.node").evaluate_all("els => els.map(e => e.dataset.kind)")
    assert {"source", "base", "prepared", "run", "artifact", "version", "alias", "served"} <= set(kinds)
    assert page.locator("svg.lineage g.node[data-kind=run] .node-label").text_content() == "alpha"
    assert page.locator("svg.lineage path.edge").count() >= 8
    # Clicking the alias opens its own lineage (the same version, reached by alias).
    page.locator("svg.lineage g.node[data-id='alias:support@champion']").click()
    _until(page, "location.hash.includes('support%40champion')")
    _drawn(page)
    assert page.locator("h2", has_text="Lineage of support@champion").count() == 1


def _greedy(server, key, model, text, max_tokens):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    return client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens,
                                          messages=[{"role": "user", "content": text}]).choices[0].message.content


def test_playground_chats_with_two_models_side_by_side(page, dashboard_server):
    server, admin, _ = dashboard_server
    _go(page, server, "#/playground?a=alpha&b=support@candidate")
    assert page.input_value("#model-a") == "alpha" and page.input_value("#model-b") == "support@candidate"
    page.fill("#max-tokens", "12")
    page.fill("#temperature", "0")
    page.fill("#prompt", "say the number 3")
    page.click("#send")
    for side in ("a", "b"):
        page.locator(f"#log-{side} .msg.assistant:not(.streaming)").wait_for()
    left = page.locator("#log-a .msg.assistant").text_content()
    right = page.locator("#log-b .msg.assistant").text_content()
    # Streamed pieces put together are exactly each model's greedy answer, and the two differ.
    assert left == _greedy(server, admin, "alpha", "say the number 3", 12)
    assert right == _greedy(server, admin, "support@candidate", "say the number 3", 12)
    assert left != right
    assert "finish" in page.locator("#log-a .msg-meta").text_content()


def test_request_log_page_filters(page, dashboard_server):
    server, admin, _ = dashboard_server
    marker = uuid.uuid4().hex[:8]
    # Markup in a prompt is shown as text, never made into elements.
    _greedy(server, admin, "alpha", f"filter me {marker} <img src=x onerror=alert(1)><i>it</i>", 2)
    with pytest.raises(openai.NotFoundError):
        _greedy(server, admin, "no-such-run", f"filter me {marker}", 2)
    _go(page, server, "#/requests")
    page.locator(".requests-table").wait_for()
    page.fill("#f-text", marker)
    page.click("#f-apply")
    _until(page, f"location.hash.includes('q={marker}')")
    _drawn(page)
    rows = page.locator("tr.request")
    assert rows.evaluate_all("els => els.map(e => e.dataset.model)") == ["no-such-run", "alpha"]
    assert "<img src=x onerror=alert(1)><i>it</i>" in rows.nth(1).text_content()
    assert page.locator(".requests-table img, .requests-table i").count() == 0
    page.select_option("#f-status", "4xx")
    page.click("#f-apply")
    _until(page, "location.hash.includes('status=4xx')")
    _drawn(page)
    assert rows.evaluate_all("els => els.map(e => e.dataset.status)") == ["404"]
    # The model filter offers every logged model; choosing one keeps only its rows.
    page.click("a.button-link")  # clear
    _until(page, "location.hash === '#/requests'")
    _drawn(page)
    page.select_option("#f-model", "alpha")
    page.click("#f-apply")
    _until(page, "location.hash.includes('model=alpha')")
    _drawn(page)
    assert set(rows.evaluate_all("els => els.map(e => e.dataset.model)")) == {"alpha"}
    rows.first.click()  # a row opens to the whole prompt and answer
    assert page.locator("tr.detail:not([hidden]) pre.text").count() == 2


def _jobs_api(server, key) -> bool:
    answer = httpx.get(f"{server.url}/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return answer.status_code != 404


def test_job_flow_upload_start_watch_chat_lineage(page, dashboard_server, tmp_path):
    server, admin, _ = dashboard_server
    if not _jobs_api(server, admin):
        pytest.skip("this server has no fine-tuning jobs API (/v1/fine_tuning/jobs answers 404)")
    data = tmp_path / "support.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"say {i}"},
                                                     {"role": "assistant", "content": f"number {i}"}]}) + "\n"
                            for i in range(12)))
    _go(page, server, "#/jobs")
    page.set_input_files("#job-file", str(data))
    page.fill("#job-epochs", "1")
    page.fill("#job-suffix", "dash")
    page.click("#job-start")
    _until(page, "document.querySelector('#job-form-state').textContent.startsWith('started ')")
    job_id = page.text_content("#job-form-state").split()[-1]
    row = page.locator(f"tr.job[data-job='{job_id}']")
    row.wait_for()
    row.locator("a").first.click()
    _until(page, "document.querySelector('#job-title')?.dataset.status === 'succeeded'",
           timeout=600, every=1)
    _drawn(page)
    assert page.locator("svg.chart g.series[data-name='train loss'] polyline").count() == 1
    assert page.locator("tr.event").count() >= 3
    model = page.locator("#job-result strong").text_content()
    assert model.startswith("ft:")
    job_page = page.url
    # Chat with the result.
    page.locator("#job-result a", has_text="chat").click()
    _until(page, "location.hash.startsWith('#/playground')")
    _drawn(page)
    assert page.input_value("#model-a") == model
    page.fill("#prompt", "say 3")
    page.click("#send")
    page.locator("#log-a .msg.assistant:not(.streaming)").wait_for()
    page.locator("#log-b .msg.assistant:not(.streaming)").wait_for()
    assert re.search(r"finish (stop|length)", page.locator("#log-a .msg-meta").text_content())
    # Open its lineage: the job, the uploaded file it trained on, the run, the requests it served.
    page.goto(job_page)
    _drawn(page)
    page.locator("#job-result a", has_text="lineage").click()
    _until(page, "location.hash.startsWith('#/lineage')")
    _drawn(page)
    assert page.get_attribute("svg.lineage g.node[data-kind=job]", "data-label") == job_id
    assert page.locator("svg.lineage g.node[data-kind=source]").count() >= 1
    assert page.get_attribute("svg.lineage g.node[data-kind=served]", "data-label") == "1 request served"

    # The result is listed with the runs, and its run page shows its record.
    _go(page, server, "#/runs")
    page.locator(f"tr[data-run='{model}'] a").click()
    _until(page, "location.hash.startsWith('#/runs/ft')")
    _drawn(page)
    assert page.locator("h1").first.text_content().startswith(model)

    # The job is the admin key's: another key for every model does not see its model at all.
    from affina.serve.auth import KeyStore

    _, other = KeyStore(server.keys_db).create("other team", ["*"])
    headers = {"Authorization": f"Bearer {other}"}
    for path, params in (("/dashboard/api/lineage", {"ref": model}), (f"/dashboard/api/runs/{model}", {})):
        answer = httpx.get(server.url + path, params=params, headers=headers, timeout=60)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found", path
    rows = httpx.get(server.url + "/dashboard/api/requests", params={"q": "say 3"}, headers=headers, timeout=60).json()
    assert model not in [r["model"] for r in rows["data"]] and model not in rows["models"]
    runs = httpx.get(server.url + "/dashboard/api/runs", headers=headers, timeout=60).json()["data"]
    assert model not in [r["name"] for r in runs]
