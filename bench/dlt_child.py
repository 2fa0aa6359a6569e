"""One dlt load of a sandbox tenant's customers and invoices in its own process: prints a JSON line.

dlt's REST API source follows the export endpoints' continuation tokens (`continueFrom` as the
`from` parameter, stopping on `hasMore: false`) into a PostgreSQL destination with merge on `id`,
nested data kept as JSON (`max_table_nesting=0`), as a user picking dlt for this job would set it up.
"""

from __future__ import annotations

import argparse
import os
import time
import urllib.parse
from pathlib import Path

import orjson


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--app-key", required=True)
    parser.add_argument("--tenant", type=int, required=True)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--pipelines-dir", required=True)
    parser.add_argument("--data-types", default="customers,invoices")
    args = parser.parse_args()
    os.environ.setdefault("RUNTIME__LOG_LEVEL", "WARNING")
    os.environ.setdefault("DLT_TELEMETRY_DISABLED", "1")
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

    import dlt
    from dlt.sources.rest_api import rest_api_source

    paths = {
        "customers": f"crm/v2/tenant/{args.tenant}/export/customers",
        "invoices": f"accounting/v2/tenant/{args.tenant}/export/invoices",
    }
    wanted = args.data_types.split(",")
    source = rest_api_source(
        {
            "client": {
                "base_url": f"{args.base_url}/production/api/",
                "auth": {"type": "bearer", "token": args.token},
                "headers": {"ST-App-Key": args.app_key},
            },
            "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
            "resources": [
                {
                    "name": name,
                    "endpoint": {
                        "path": paths[name],
                        "data_selector": "data",
                        "paginator": {
                            "type": "cursor",
                            "cursor_path": "continueFrom",
                            "cursor_param": "from",
                            "has_more_path": "hasMore",
                        },
                    },
                }
                for name in wanted
            ],
        },
        max_table_nesting=0,
    )
    # The private cluster trusts its Unix socket; dlt insists on a host and a password anyway.
    url = urllib.parse.urlsplit(args.dsn)
    query = dict(urllib.parse.parse_qsl(url.query))
    prefix = "DESTINATION__POSTGRES__CREDENTIALS__"
    os.environ[prefix + "DATABASE"] = url.path.lstrip("/")
    os.environ[prefix + "USERNAME"] = url.username or "postgres"
    os.environ[prefix + "PASSWORD"] = "unused"
    os.environ[prefix + "HOST"] = urllib.parse.quote(query["host"], safe="")  # dlt does not
    os.environ[prefix + "PORT"] = query.get("port", "5432")
    pipeline = dlt.pipeline(
        pipeline_name="stsync_bench",
        pipelines_dir=args.pipelines_dir,
        destination="postgres",
        dataset_name="dlt_bench",
    )
    clock = time.perf_counter()
    pipeline.run(source)
    seconds = time.perf_counter() - clock
    counts = {}
    with pipeline.sql_client() as client:
        for name in wanted:
            counts[name] = client.execute_sql(f"SELECT count(*) FROM {name}")[0][0]
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            rss = int(line.split()[1]) // 1024
    print(orjson.dumps({"seconds": seconds, "counts": counts, "peak_rss_mb": rss}).decode())


if __name__ == "__main__":
    main()
