"""The dashboard's page and JSON routes on a real `affina serve --auth keys` over tiny trained,
registered and promoted runs: what each page reads, the keys it needs, and its errors."""

from __future__ import annotations

import re
import uuid

import httpx
import openai
import pytest

from affina.serve.dashboard.api import STATIC_DIR


def _get(server, path, key, **params):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(server.url + path, headers=headers, params=params, timeout=60)


def _ask(server, key, model, text, max_tokens=4):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)
    return client.chat.completions.create(model=model, temperature=0, max_tokens=max_tokens,
                                          messages=[{"role": "user", "content": text}])


def test_page_and_assets_are_served_with_no_outside_address(dashboard_server):
    server, _, _ = dashboard_server
    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy
    referenced = re.findall(r'(?:src|href)="(/dashboard/static/[^"]+)"', page.text)
    assert referenced, "the page loads its script and styles from the package"
    for path in referenced:
        assert httpx.get(server.url + path, timeout=30).status_code == 200
    # Nothing is fetched from elsewhere: the only absolute URL in any asset is the SVG namespace.
    files = [p for p in STATIC_DIR.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".html", ".css", ".js"}
    for path in files:
        for url in re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"'`)]*", path.read_text()):
            assert url == "http://www.w3.org/2000/svg", f"{path.name} refers to {url}"
        if path.suffix == ".js":
            for name in re.findall(r'^import .* from "([^"]+)";$', path.read_text(), re.M):
                assert (path.parent / name).resolve().is_file(), f"{path.name} imports missing {name}"
    assert httpx.get(server.url + "/dashboard/static/../api.py", timeout=30).status_code == 404


def test_every_route_needs_a_key_sent_as_a_header(dashboard_server):
    server, admin, _ = dashboard_server
    for path in ("/dashboard/api/session", "/dashboard/api/overview", "/dashboard/api/runs",
                 "/dashboard/api/registry", "/dashboard/api/requests", "/dashboard/api/lineage"):
        missing = _get(server, path, None)
        assert missing.status_code == 401, path
        assert missing.json()["error"]["code"] == "missing_api_key"
    assert _get(server, "/dashboard/api/runs", "aff-000000000000-wrong").json()["error"]["code"] == "invalid_api_key"
    in_url = httpx.get(server.url + "/dashboard/api/runs", params={"api_key": admin}, timeout=30)
    assert in_url.status_code == 401 and in_url.json()["error"]["code"] == "api_key_in_query"
    session = _get(server, "/dashboard/api/session", admin).json()
    assert session["auth"] == "keys" and session["base"] == "base" and session["key_id"]


def test_runs_show_record_config_before_after_and_learning_curve(dashboard_server):
    server, admin, _ = dashboard_server
    runs = _get(server, "/dashboard/api/runs", admin).json()
    mine = [r for r in runs["data"] if not r["name"].startswith("ft:")]  # a job's result may be there too
    assert {r["name"] for r in mine} == {"alpha", "beta"}
    assert all(r["servable"] and r["method"] == "lora" for r in mine)
    alpha = _get(server, "/dashboard/api/runs/alpha", admin).json()
    assert alpha["record"]["train"]["global_step"] == 12 and alpha["config"]["method"]["name"] == "lora"
    table = {row["measure"]: row for row in alpha["evaluation"]}
    assert {"loss", "perplexity", "exact_match", "token_f1"} <= set(table)
    # 12 steps at lr 1e-2 on 16 rows lower the loss: the table says so and marks it better.
    assert table["loss"]["after"] < table["loss"]["before"] and table["loss"]["better"] is True
    assert table["loss"]["delta"] == pytest.approx(table["loss"]["after"] - table["loss"]["before"])
    curve = alpha["learning_curve"]
    assert [step for step, _ in curve["train"]] == [1, *range(2, 13, 2)]  # the first step, then every 2
    assert [step for step, _ in curve["validation"]] == [4, 8, 12]
    assert len(alpha["predictions"]) == 4 and alpha["predictions"][0]["reference"] == "number 40"

    for bad, status, code in (("nope", 404, "model_not_found"), ("%2E%2E", 400, "invalid_model_name"),
                              ("a%20b", 400, "invalid_model_name")):
        answer = _get(server, f"/dashboard/api/runs/{bad}", admin)
        assert answer.status_code == status and answer.json()["error"]["code"] == code, bad


def test_registry_shows_versions_aliases_and_promotion_decisions(dashboard_server):
    server, admin, _ = dashboard_server
    models = _get(server, "/dashboard/api/registry", admin).json()["data"]
    support = next(m for m in models if m["name"] == "support")
    assert support["name"] == "support" and support["aliases"] == {"champion": 1, "candidate": 2}
    versions = {v["version"]: v for v in support["versions"]}
    assert versions[1]["store_name"] == "alpha" and versions[2]["store_name"] == "beta"
    assert versions[1]["promotions"]["champion"]["decision"] == "promoted"
    refused = versions[2]["promotions"]["champion"]
    assert refused["decision"] == "refused"
    gates = {g["gate"]: g for g in refused["details"]["gates"]}
    gate = gates["metric"]
    assert gate["passed"] is False and "incumbent" in gate["detail"]
    assert all(g["passed"] for name, g in gates.items() if name != "metric")  # bias, forgetting: n/a
    assert [(e["kind"], e["alias"], e.get("decision")) for e in support["history"]] == [
        ("promotion", "champion", "promoted"), ("promotion", "champion", "refused"), ("alias", "candidate", None)]


def test_lineage_graph_of_an_alias_counts_the_requests_it_served(dashboard_server):
    server, admin, _ = dashboard_server
    before = _get(server, "/dashboard/api/lineage", admin, ref="support@champion").json()
    _ask(server, admin, "support@champion", "lineage count")
    info = _get(server, "/dashboard/api/lineage", admin, ref="support@champion").json()
    assert info["store_name"] == "alpha" and info["artifact"]["verified"] is True
    assert info["served"]["requests"] == before["served"]["requests"] + 1
    nodes = {n["id"]: n for n in info["graph"]["nodes"]}
    assert {"run", "base", "prepared:train", "prepared:validation", "artifact", "served",
            "version:support@1", "alias:support@champion"} <= set(nodes)
    edges = {(e["from"], e["to"]) for e in info["graph"]["edges"]}
    assert {("source:0", "prepared:train"), ("prepared:train", "run"), ("run", "artifact"),
            ("artifact", "version:support@1"), ("alias:support@champion", "version:support@1")} <= edges
    assert all(a in nodes and b in nodes for a, b in edges)
    sources = {n["detail"][0].split(" · ")[0]: n["id"] for n in nodes.values() if n["kind"] == "source"}
    assert set(sources) == {"train", "eval"} and (sources["eval"], "run") in edges
    by_run = _get(server, "/dashboard/api/lineage", admin, ref="beta").json()
    assert by_run["graph"]["nodes"][0]["label"] == "beta" and "alias:support@candidate" in {
        n["id"] for n in by_run["graph"]["nodes"]}

    for ref, status in (("support@nosuch", 404), ("other@1", 404), ("/etc", 400), ("../runs/alpha", 400),
                        ("", 400)):
        answer = _get(server, "/dashboard/api/lineage", admin, ref=ref)
        assert answer.status_code == status, ref
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def test_request_log_filters_by_model_status_time_and_text(dashboard_server):
    server, admin, _ = dashboard_server
    marker = uuid.uuid4().hex[:10]
    _ask(server, admin, "alpha", f"first {marker}")
    _ask(server, admin, "beta", f"second {marker}")
    with pytest.raises(openai.NotFoundError):
        _ask(server, admin, "missing-run", f"third {marker}")

    def rows(**params):
        answer = _get(server, "/dashboard/api/requests", admin, **params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    found = rows(q=marker)["data"]
    assert [r["model"] for r in found] == ["missing-run", "beta", "alpha"]  # newest first
    assert [r["model"] for r in rows(q=marker.upper(), model="beta")["data"]] == ["beta"]
    assert [r["status"] for r in rows(q=marker, status="4xx")["data"]] == [404]
    assert [r["model"] for r in rows(q=marker, status="200")["data"]] == ["beta", "alpha"]
    newest = found[0]["created_at"]
    assert rows(q=marker, since=newest)["data"][0]["model"] == "missing-run"
    assert all(r["model"] != "missing-run" for r in rows(q=marker, until=newest)["data"])
    assert len(rows(q=marker, limit="1")["data"]) == 1
    assert {"alpha", "beta", "missing-run"} <= set(rows(limit="1")["models"])
    for params, param in (({"since": "yesterday"}, "since"), ({"limit": "0"}, "limit"),
                          ({"limit": "x"}, "limit")):
        answer = _get(server, "/dashboard/api/requests", admin, **params)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == param
    assert _get(server, "/dashboard/api/requests", admin, status="2zz").status_code == 400


def test_a_key_for_one_model_sees_only_that_model(dashboard_server):
    server, admin, alpha_only = dashboard_server
    marker = uuid.uuid4().hex[:10]
    _ask(server, admin, "beta", f"secret {marker}")
    _ask(server, alpha_only, "alpha", f"mine {marker}")
    assert [r["name"] for r in _get(server, "/dashboard/api/runs", alpha_only).json()["data"]] == ["alpha"]
    assert _get(server, "/dashboard/api/registry", alpha_only).json()["data"] == []
    assert _get(server, "/dashboard/api/runs/beta", alpha_only).status_code == 403
    assert _get(server, "/dashboard/api/lineage", alpha_only, ref="support@1").status_code == 403
    assert _get(server, "/dashboard/api/lineage", alpha_only, ref="alpha").status_code == 200
    visible = _get(server, "/dashboard/api/requests", alpha_only, q=marker).json()
    assert [r["model"] for r in visible["data"]] == ["alpha"] and "beta" not in visible["models"]
    assert _get(server, "/dashboard/api/requests", alpha_only, model="beta").status_code == 403
    overview = _get(server, "/dashboard/api/overview", alpha_only).json()
    assert [r["name"] for r in overview["runs"]] == ["alpha"] and overview["requests"] is None
    assert {r["model"] for r in overview["recent_requests"]} == {"alpha"}
