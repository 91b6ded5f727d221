"""Feed the demo's shout workers from outside: enqueue jobs over REST while `rolehost serve`
runs them, and read the results they write back. Run by host/cli/tests/rest_sdk.rs."""

import os
import time
import unittest
import uuid

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

CONN = os.environ["ROLEHOST_CONNECTION_STRING"]
JOBS = 25


class DemoJobsTest(unittest.TestCase):
    def test_jobs_put_over_rest_are_done_by_the_workers(self):
        q = QueueClient.from_connection_string(CONN, "shout")
        try:
            q.create_queue()
        except ResourceExistsError:
            pass
        jobs = {uuid.uuid4().hex: f"hello number {i}" for i in range(JOBS)}
        started = time.monotonic()
        for job_id, text in jobs.items():
            q.send_message(f"{job_id}\n{text}")
        results = BlobServiceClient.from_connection_string(CONN).get_container_client("results")
        done = {}
        deadline = time.monotonic() + 60
        while len(done) < JOBS and time.monotonic() < deadline:
            for job_id in jobs.keys() - done.keys():
                try:
                    done[job_id] = results.get_blob_client(job_id).download_blob().readall().decode()
                except ResourceNotFoundError:
                    pass
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        self.assertEqual(len(done), JOBS, f"only {len(done)} of {JOBS} jobs done in 60 s")
        for job_id, text in jobs.items():
            self.assertEqual(done[job_id], text.upper() + "!")
        # Every message was deleted once done.
        deadline = time.monotonic() + 10
        while q.peek_messages(max_messages=32) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(q.peek_messages(max_messages=32), [])
        print(f"{JOBS} jobs done in {elapsed:.1f} s")


if __name__ == "__main__":
    unittest.main(verbosity=2)
