"""The Queue service of a running rolehost host, driven by the official Azure SDK for Python.

Run by host/cli/tests/rest_sdk.rs against a real `rolehost serve`, with:
  ROLEHOST_CONNECTION_STRING        a deployed service's account (from `rolehost storage
                                    connection-string`)
  ROLEHOST_OTHER_CONNECTION_STRING  another account on the same host (the development account)
"""

import datetime
import os
import unittest
import urllib.error
import urllib.request
import uuid

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
)
from azure.storage.queue import (
    AccessPolicy,
    AccountSasPermissions,
    QueueClient,
    QueueSasPermissions,
    QueueServiceClient,
    ResourceTypes,
    generate_account_sas,
    generate_queue_sas,
)

CONN = os.environ["ROLEHOST_CONNECTION_STRING"]
OTHER = os.environ["ROLEHOST_OTHER_CONNECTION_STRING"]


def parts(conn):
    d = dict(p.split("=", 1) for p in conn.split(";") if p)
    return d["AccountName"], d["AccountKey"], d["QueueEndpoint"]


def fresh(prefix="q"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class QueueTest(unittest.TestCase):
    def setUp(self):
        self.svc = QueueServiceClient.from_connection_string(CONN)
        self.name = fresh()
        self.q = self.svc.get_queue_client(self.name)
        self.q.create_queue()

    def tearDown(self):
        try:
            self.q.delete_queue()
        except ResourceNotFoundError:
            pass

    def test_create_is_idempotent_only_with_the_same_metadata(self):
        q = self.svc.get_queue_client(fresh())
        q.create_queue(metadata={"team": "a"})
        # Azure answers 204 when the queue is there with the same metadata (the SDK raises on
        # it), and 409 QueueAlreadyExists when its metadata differs.
        with self.assertRaises(ResourceExistsError) as e:
            q.create_queue(metadata={"team": "a"})
        self.assertEqual(e.exception.status_code, 204)
        with self.assertRaises(ResourceExistsError) as e:
            q.create_queue(metadata={"team": "b"})
        self.assertEqual(e.exception.status_code, 409)
        self.assertEqual(e.exception.error_code, "QueueAlreadyExists")
        self.assertEqual(q.get_queue_properties().metadata, {"team": "a"}, "unchanged")
        q.delete_queue()
        with self.assertRaises(ResourceNotFoundError) as e:
            q.delete_queue()
        self.assertEqual(e.exception.error_code, "QueueNotFound")

    def test_bad_names_are_refused(self):
        for bad, code in [("UPPER", "InvalidResourceName"), ("a--b", "InvalidResourceName"), ("ab", "OutOfRangeInput")]:
            with self.assertRaises(HttpResponseError) as e:
                self.svc.get_queue_client(bad).create_queue()
            self.assertEqual(e.exception.status_code, 400, bad)
            self.assertEqual(e.exception.error_code, code, bad)

    def test_list_with_prefix_metadata_and_pages(self):
        prefix = fresh("list")
        names = [f"{prefix}-{i}" for i in range(5)]
        for n in names:
            self.svc.get_queue_client(n).create_queue(metadata={"n": n[-1]})
        try:
            listed = list(self.svc.list_queues(name_starts_with=prefix, include_metadata=True, results_per_page=2))
            self.assertEqual([q.name for q in listed], names)
            self.assertEqual([q.metadata["n"] for q in listed], [str(i) for i in range(5)])
            pages = list(self.svc.list_queues(name_starts_with=prefix, results_per_page=2).by_page())
            self.assertEqual([len(list(p)) for p in pages], [2, 2, 1])
        finally:
            for n in names:
                self.svc.get_queue_client(n).delete_queue()

    def test_metadata_and_count(self):
        self.q.set_queue_metadata({"owner": "ops", "tier": "gold"})
        for i in range(3):
            self.q.send_message(f"m{i}")
        props = self.q.get_queue_properties()
        self.assertEqual(props.metadata, {"owner": "ops", "tier": "gold"})
        self.assertGreaterEqual(props.approximate_message_count, 3)

    def test_the_at_least_once_cycle(self):
        sent = self.q.send_message("resize <cat>.png & more")
        self.assertTrue(sent.id and sent.pop_receipt)
        peeked = self.q.peek_messages(max_messages=32)
        self.assertEqual([m.content for m in peeked], ["resize <cat>.png & more"])
        self.assertEqual(peeked[0].dequeue_count, 0)
        got = self.q.receive_message(visibility_timeout=30)
        self.assertEqual(got.content, "resize <cat>.png & more")
        self.assertEqual(got.dequeue_count, 1)
        self.assertIsNone(self.q.receive_message(), "invisible while held")
        self.assertEqual(self.q.peek_messages(), [], "peek sees only visible messages")
        # Extend, change, release: the old receipt is stale afterwards.
        upd = self.q.update_message(got, visibility_timeout=0, content="changed")
        with self.assertRaises(ResourceNotFoundError) as e:
            self.q.delete_message(got.id, got.pop_receipt)
        self.assertEqual(e.exception.error_code, "MessageNotFound")
        again = self.q.receive_message()
        self.assertEqual((again.content, again.dequeue_count), ("changed", 2))
        self.assertNotEqual(again.pop_receipt, upd.pop_receipt)
        self.q.delete_message(again)
        self.assertEqual(self.q.peek_messages(), [])

    def test_batches_delays_and_ttl(self):
        for i in range(40):
            self.q.send_message(f"job {i}")
        self.q.send_message("later", visibility_timeout=3600)
        self.q.send_message("forever", time_to_live=-1)
        first = self.q.receive_messages(messages_per_page=32, visibility_timeout=60)
        batch = next(first.by_page())
        contents = [m.content for m in batch]
        self.assertEqual(contents, [f"job {i}" for i in range(32)], "first delivery in insertion order")
        forever = [m for m in self.q.peek_messages(max_messages=32) if m.content == "forever"]
        self.assertEqual(forever[0].expires_on.year, 9999)
        self.assertNotIn("later", [m.content for m in self.q.peek_messages(max_messages=32)])
        self.q.clear_messages()
        self.assertEqual(self.q.peek_messages(), [])

    def test_parameters_out_of_range(self):
        with self.assertRaises(HttpResponseError) as e:
            self.q.send_message("x", visibility_timeout=8 * 24 * 3600)
        self.assertEqual(e.exception.status_code, 400)
        self.assertEqual(e.exception.error_code, "OutOfRangeQueryParameterValue")
        with self.assertRaises(HttpResponseError) as e:
            self.q.send_message("x", visibility_timeout=10, time_to_live=5)
        self.assertEqual(e.exception.error_code, "InvalidQueryParameterValue")
        with self.assertRaises(HttpResponseError) as e:
            self.q.send_message("x" * (64 * 1024 + 1))
        self.assertEqual(e.exception.status_code, 413)
        self.assertEqual(e.exception.error_code, "RequestBodyTooLarge")
        self.assertEqual(self.q.peek_messages(), [], "nothing was put")

    def test_missing_queue(self):
        q = self.svc.get_queue_client(fresh("missing"))
        for op in (lambda: q.send_message("x"), q.receive_message, q.get_queue_properties, q.peek_messages):
            with self.assertRaises(ResourceNotFoundError) as e:
                op()
            self.assertEqual(e.exception.error_code, "QueueNotFound")


class AuthTest(unittest.TestCase):
    def setUp(self):
        self.account, self.key, self.endpoint = parts(CONN)
        self.svc = QueueServiceClient.from_connection_string(CONN)
        self.name = fresh("auth")
        self.q = self.svc.get_queue_client(self.name)
        self.q.create_queue()

    def tearDown(self):
        self.q.delete_queue()

    def url(self):
        return f"{self.endpoint}/{self.name}"

    def test_a_wrong_key_is_refused_and_changes_nothing(self):
        wrong = QueueClient.from_queue_url(self.url(), credential={"account_name": self.account, "account_key": parts(OTHER)[1]})
        with self.assertRaises(ClientAuthenticationError) as e:
            wrong.send_message("forged")
        self.assertEqual(e.exception.error_code, "AuthenticationFailed")
        self.assertEqual(self.q.peek_messages(), [])

    def test_another_accounts_key_never_reaches_this_account(self):
        other_account, other_key, _ = parts(OTHER)
        # Signed as the other account, aimed at this one's URL.
        cross = QueueClient.from_queue_url(self.url(), credential={"account_name": other_account, "account_key": other_key})
        with self.assertRaises(ClientAuthenticationError):
            cross.peek_messages()
        # And the other account's own namespace does not hold this queue.
        other = QueueServiceClient.from_connection_string(OTHER).get_queue_client(self.name)
        with self.assertRaises(ResourceNotFoundError):
            other.peek_messages()

    def test_anonymous_is_refused(self):
        # The SDK will not send an unsigned request: plain HTTP does.
        self.q.send_message("private")
        req = urllib.request.Request(f"{self.url()}/messages?peekonly=true")
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req)
        self.assertEqual(e.exception.code, 401)
        self.assertEqual(e.exception.headers["x-ms-error-code"], "NoAuthenticationInformation")
        self.assertNotIn(b"private", e.exception.read())

    def test_queue_sas_grants_what_it_says(self):
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        sas = generate_queue_sas(self.account, self.name, self.key, permission=QueueSasPermissions(add=True), expiry=expiry)
        producer = QueueClient.from_queue_url(self.url(), credential=sas)
        producer.send_message("from a browser")
        with self.assertRaises(HttpResponseError) as e:
            producer.receive_message()
        self.assertEqual(e.exception.status_code, 403)
        self.assertEqual(e.exception.error_code, "AuthorizationPermissionMismatch")
        self.assertEqual([m.content for m in self.q.peek_messages()], ["from a browser"])
        # The same token for another queue does not verify.
        other = QueueClient.from_queue_url(f"{self.endpoint}/{fresh('other')}", credential=sas)
        with self.assertRaises(ClientAuthenticationError):
            other.send_message("x")

    def test_stored_access_policies_grant_and_revoke(self):
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        policy = AccessPolicy(permission=QueueSasPermissions(read=True), expiry=future)
        self.q.set_queue_access_policy(signed_identifiers={"readers": policy})
        self.assertEqual(list(self.q.get_queue_access_policy()), ["readers"])
        self.q.send_message("for readers")
        sas = generate_queue_sas(self.account, self.name, self.key, policy_id="readers")
        reader = QueueClient.from_queue_url(self.url(), credential=sas)
        self.assertEqual([m.content for m in reader.peek_messages()], ["for readers"])
        with self.assertRaises(HttpResponseError) as e:
            reader.send_message("not allowed")
        self.assertEqual(e.exception.error_code, "AuthorizationPermissionMismatch")
        # Removing the policy revokes every token naming it.
        self.q.set_queue_access_policy(signed_identifiers={})
        with self.assertRaises(ClientAuthenticationError):
            reader.peek_messages()
        with self.assertRaises((HttpResponseError, ValueError)):
            self.q.set_queue_access_policy(signed_identifiers={f"p{i}": policy for i in range(6)})
        # A queue made again under the name starts with none.
        self.q.set_queue_access_policy(signed_identifiers={"readers": policy})
        self.q.delete_queue()
        self.q.create_queue()
        self.assertEqual(self.q.get_queue_access_policy(), {})

    def test_expired_and_tampered_sas_are_refused(self):
        past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=1)
        sas = generate_queue_sas(self.account, self.name, self.key, permission=QueueSasPermissions(read=True, add=True, process=True), expiry=past)
        with self.assertRaises(ClientAuthenticationError) as e:
            QueueClient.from_queue_url(self.url(), credential=sas).send_message("late")
        self.assertEqual(e.exception.error_code, "AuthenticationFailed")
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        sas = generate_queue_sas(self.account, self.name, self.key, permission=QueueSasPermissions(read=True), expiry=future)
        widened = sas.replace("sp=r", "sp=raup")
        with self.assertRaises(ClientAuthenticationError):
            QueueClient.from_queue_url(self.url(), credential=widened).send_message("x")
        self.assertEqual(self.q.peek_messages(), [], "nothing was put")

    def test_account_sas_by_service_and_resource_type(self):
        future = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        sas = generate_account_sas(
            self.account, self.key,
            resource_types=ResourceTypes(service=True, object=True),
            permission=AccountSasPermissions(list=True, add=True, process=True, read=True),
            expiry=future,
        )
        client = QueueServiceClient(self.endpoint, credential=sas)
        self.assertIn(self.name, [q.name for q in client.list_queues()])
        q = client.get_queue_client(self.name)
        q.send_message("via account sas")
        self.assertEqual(q.receive_message().content, "via account sas")
        with self.assertRaises(HttpResponseError) as e:
            client.get_queue_client(fresh("nope")).create_queue()
        self.assertEqual(e.exception.status_code, 403)
        self.assertEqual(e.exception.error_code, "AuthorizationResourceTypeMismatch")


if __name__ == "__main__":
    unittest.main(verbosity=2)
