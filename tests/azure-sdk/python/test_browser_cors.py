"""A browser uploads straight into a blob with a SAS: headless Chromium, on a page of another
origin, sends the CORS preflight and the PUT; the account's CORS rules decide. Run by
host/cli/tests/rest_sdk.rs (see test_queue.py for its environment)."""

import datetime
import functools
import http.server
import os
import subprocess
import tempfile
import threading
import unittest

from azure.storage.blob import BlobSasPermissions, BlobServiceClient, CorsRule, generate_blob_sas

CONN = os.environ["ROLEHOST_CONNECTION_STRING"]

PAGE = """<!doctype html><html><body><p id="status">pending</p><script>
fetch(%r, {method: 'PUT', headers: {'x-ms-blob-type': 'BlockBlob', 'Content-Type': 'text/plain'},
           body: 'sent by a browser'})
  .then(r => { document.getElementById('status').textContent =
                 'status ' + r.status + ' id ' + (r.headers.get('x-ms-request-id') ? 'exposed' : 'hidden'); })
  .catch(e => { document.getElementById('status').textContent = 'blocked'; });
</script></body></html>"""


def serve(directory):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def chromium(url):
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=10000", "--dump-dom", f"--user-data-dir={profile}", url],
            capture_output=True, text=True, timeout=120)
    return out.stdout


class BrowserCorsTest(unittest.TestCase):
    def test_a_page_of_an_allowed_origin_uploads_and_others_are_blocked(self):
        d = dict(p.split("=", 1) for p in CONN.split(";") if p)
        svc = BlobServiceClient.from_connection_string(CONN)
        container = svc.get_container_client("uploads")
        if not container.exists():
            container.create_container()
        pages = tempfile.mkdtemp()
        allowed, other = serve(pages), serve(pages)
        origin = f"http://127.0.0.1:{allowed.server_address[1]}"
        svc.set_service_properties(cors=[CorsRule([origin], ["PUT", "GET"], allowed_headers=["x-ms-*", "content-type"],
                                                  exposed_headers=["x-ms-*"], max_age_in_seconds=60)])
        try:
            for name in ("allowed.txt", "other.txt"):
                sas = generate_blob_sas(d["AccountName"], "uploads", name, account_key=d["AccountKey"],
                                        permission=BlobSasPermissions(create=True, write=True),
                                        expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
                with open(os.path.join(pages, name + ".html"), "w") as f:
                    f.write(PAGE % f"{d['BlobEndpoint']}/uploads/{name}?{sas}")
            dom = chromium(f"{origin}/allowed.txt.html")
            self.assertIn('<p id="status">status 201 id exposed</p>', dom)
            self.assertEqual(container.get_blob_client("allowed.txt").download_blob().readall(), b"sent by a browser")
            dom = chromium(f"http://127.0.0.1:{other.server_address[1]}/other.txt.html")
            self.assertIn('<p id="status">blocked</p>', dom, "no rule for that origin: the preflight fails")
            self.assertFalse(container.get_blob_client("other.txt").exists(), "and nothing was written")
        finally:
            svc.set_service_properties(cors=[])
            allowed.shutdown()
            other.shutdown()


if __name__ == "__main__":
    unittest.main(verbosity=2)
