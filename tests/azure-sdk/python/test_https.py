"""The storage endpoints over HTTPS: the Python SDK with the host's certificate (signed by the
test CA in tests/fixtures), and a client that does not trust it refused at the handshake.
Run by host/cli/tests/rest_sdk.rs with ROLEHOST_CONNECTION_STRING (https endpoints) and
ROLEHOST_CA (the CA file)."""

import os
import ssl
import unittest
import urllib.request

from azure.core.exceptions import ServiceRequestError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

CONN = os.environ["ROLEHOST_CONNECTION_STRING"]
CA = os.environ["ROLEHOST_CA"]


class HttpsTest(unittest.TestCase):
    def test_sdks_over_tls(self):
        self.assertIn("DefaultEndpointsProtocol=https", CONN)
        q = QueueClient.from_connection_string(CONN, "secure", connection_verify=CA)
        q.create_queue()
        q.send_message("over tls")
        self.assertEqual(q.receive_message().content, "over tls")
        svc = BlobServiceClient.from_connection_string(CONN, connection_verify=CA)
        c = svc.create_container("secure")
        c.get_blob_client("b").upload_blob(b"encrypted in flight")
        self.assertEqual(c.get_blob_client("b").download_blob().readall(), b"encrypted in flight")

    def test_an_untrusting_client_is_refused(self):
        q = QueueClient.from_connection_string(CONN, "secure2", connection_verify=True, retry_total=0)
        with self.assertRaises(ServiceRequestError):
            q.create_queue()
        endpoint = dict(p.split("=", 1) for p in CONN.split(";") if p)["QueueEndpoint"]
        with self.assertRaises(urllib.error.URLError):
            urllib.request.urlopen(endpoint + "?comp=list", context=ssl.create_default_context())


if __name__ == "__main__":
    unittest.main(verbosity=2)
