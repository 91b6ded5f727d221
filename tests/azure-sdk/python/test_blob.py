"""The Blob service of a running rolehost host, driven by the official Azure SDK for Python.

Run by host/cli/tests/rest_sdk.rs against a real `rolehost serve` (see test_queue.py for the
environment it is given).
"""

import datetime
import hashlib
import os
import unittest
import urllib.error
import urllib.parse
import urllib.request
import uuid

from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.blob import (
    AccessPolicy,
    BlobBlock,
    CorsRule,
    PublicAccess,
    BlobClient,
    BlobSasPermissions,
    BlobServiceClient,
    ContainerSasPermissions,
    ContentSettings,
    generate_blob_sas,
    generate_container_sas,
)

CONN = os.environ["ROLEHOST_CONNECTION_STRING"]
OTHER = os.environ["ROLEHOST_OTHER_CONNECTION_STRING"]


def parts(conn):
    d = dict(p.split("=", 1) for p in conn.split(";") if p)
    return d["AccountName"], d["AccountKey"], d["BlobEndpoint"]


def fresh(prefix="c"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def future(hours=1):
    return datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=hours)


class BlobTest(unittest.TestCase):
    def setUp(self):
        self.svc = BlobServiceClient.from_connection_string(CONN)
        self.name = fresh()
        self.c = self.svc.create_container(self.name, metadata={"purpose": "test"})

    def tearDown(self):
        try:
            self.c.delete_container()
        except (ResourceNotFoundError, HttpResponseError):
            pass

    def test_validated_uploads(self):
        # validate_content sends each body's Content-MD5, which the host checks.
        b = self.c.get_blob_client("checked.bin")
        b.upload_blob(b"checked" * 1000, validate_content=True)
        self.assertEqual(b.download_blob().readall(), b"checked" * 1000)
        b.stage_block("YmxvY2sx", b"one", validate_content=True)
        b.commit_block_list([BlobBlock("YmxvY2sx")])
        self.assertEqual(b.download_blob().readall(), b"one")

    def test_containers(self):
        with self.assertRaises(ResourceExistsError) as e:
            self.svc.create_container(self.name)
        self.assertEqual(e.exception.error_code, "ContainerAlreadyExists")
        props = self.c.get_container_properties()
        self.assertEqual(props.metadata, {"purpose": "test"})
        self.assertTrue(props.etag.startswith('"0x'))
        self.c.set_container_metadata({"purpose": "changed"})
        self.assertEqual(self.c.get_container_properties().metadata, {"purpose": "changed"})
        names = [c.name for c in self.svc.list_containers(name_starts_with=self.name, include_metadata=True)]
        self.assertEqual(names, [self.name])
        with self.assertRaises(HttpResponseError) as e:
            self.svc.create_container("Bad_Name")
        self.assertEqual(e.exception.status_code, 400)
        self.assertEqual(e.exception.error_code, "InvalidResourceName")

    def test_put_get_properties_metadata_delete(self):
        b = self.c.get_blob_client("dir/hello.txt")
        data = b"hello, rolehost\n" * 100
        r = b.upload_blob(
            data,
            metadata={"author": "me"},
            content_settings=ContentSettings(content_type="text/plain", cache_control="no-cache"),
        )
        self.assertTrue(r["etag"])
        self.assertEqual(b.download_blob().readall(), data)
        p = b.get_blob_properties()
        self.assertEqual(p.size, len(data))
        self.assertEqual(p.content_settings.content_type, "text/plain")
        self.assertEqual(p.content_settings.cache_control, "no-cache")
        self.assertEqual(bytes(p.content_settings.content_md5), hashlib.md5(data).digest())
        self.assertEqual(p.metadata, {"author": "me"})
        self.assertEqual(p.blob_type, "BlockBlob")
        b.set_blob_metadata({"author": "you"})
        self.assertEqual(b.get_blob_properties().metadata, {"author": "you"})
        b.set_http_headers(ContentSettings(content_type="application/json"))
        p2 = b.get_blob_properties()
        self.assertEqual(p2.content_settings.content_type, "application/json")
        self.assertIsNone(p2.content_settings.cache_control, "Set Blob Properties clears what it is not given")
        self.assertNotEqual(p2.etag, p.etag)
        b.delete_blob()
        with self.assertRaises(ResourceNotFoundError) as e:
            b.get_blob_properties()
        self.assertEqual(e.exception.status_code, 404)
        with self.assertRaises(ResourceNotFoundError) as e:
            b.download_blob()
        self.assertEqual(e.exception.error_code, "BlobNotFound")

    def test_ranges(self):
        b = self.c.get_blob_client("r")
        data = bytes(range(256)) * 16
        b.upload_blob(data)
        self.assertEqual(b.download_blob(offset=10, length=20).readall(), data[10:30])
        self.assertEqual(b.download_blob(offset=4000).readall(), data[4000:])
        with self.assertRaises(HttpResponseError) as e:
            b.download_blob(offset=len(data) + 10, length=5).readall()
        self.assertEqual(e.exception.status_code, 416)
        empty = self.c.get_blob_client("empty")
        empty.upload_blob(b"")
        self.assertEqual(empty.download_blob().readall(), b"")

    def test_conditions(self):
        b = self.c.get_blob_client("cond")
        first = b.upload_blob(b"v1")
        with self.assertRaises(ResourceExistsError) as e:
            b.upload_blob(b"v2", overwrite=False)
        self.assertEqual(e.exception.error_code, "BlobAlreadyExists")
        b.upload_blob(b"v2", overwrite=True, etag=first["etag"], match_condition=MatchConditions.IfNotModified)
        with self.assertRaises(ResourceModifiedError) as e:
            b.upload_blob(b"v3", overwrite=True, etag=first["etag"], match_condition=MatchConditions.IfNotModified)
        self.assertEqual(e.exception.status_code, 412)
        self.assertEqual(e.exception.error_code, "ConditionNotMet")
        self.assertEqual(b.download_blob().readall(), b"v2", "the failed write changed nothing")
        etag = b.get_blob_properties().etag
        with self.assertRaises(ResourceModifiedError):
            b.download_blob(etag=etag, match_condition=MatchConditions.IfModified).readall()
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
        with self.assertRaises(ResourceModifiedError):
            b.set_blob_metadata({"a": "b"}, if_modified_since=later)

    def test_leases(self):
        b = self.c.get_blob_client("locked")
        b.upload_blob(b"x")
        lease = b.acquire_lease(lease_duration=15)
        with self.assertRaises(HttpResponseError) as e:
            b.upload_blob(b"y", overwrite=True)
        self.assertEqual((e.exception.status_code, e.exception.error_code), (412, "LeaseIdMissing"))
        b.upload_blob(b"y", overwrite=True, lease=lease)
        with self.assertRaises(HttpResponseError) as e:
            b.acquire_lease(lease_duration=15)
        self.assertEqual(e.exception.error_code, "LeaseAlreadyPresent")
        self.assertEqual(b.get_blob_properties().lease.state, "leased")
        lease.renew()
        lease.release()
        self.assertEqual(b.get_blob_properties().lease.state, "available")
        c_lease = self.c.acquire_lease(lease_duration=-1)
        with self.assertRaises(HttpResponseError) as e:
            self.c.delete_container()
        self.assertEqual(e.exception.error_code, "LeaseIdMissing")
        c_lease.break_lease(lease_break_period=0)

    def test_blocks_and_large_uploads(self):
        b = self.c.get_blob_client("big.bin")
        data = os.urandom(9 * 1024 * 1024 + 17)
        # Blocks of 4 MiB and a block list, as the SDK uploads past its single-put size.
        b.upload_blob(data, max_concurrency=2, blob_type="BlockBlob", length=len(data))
        blob = BlobClient.from_connection_string(CONN, self.name, "big.bin", max_single_put_size=1024 * 1024, max_block_size=1024 * 1024)
        blob.upload_blob(data, overwrite=True)
        committed, uncommitted = blob.get_block_list("all")
        self.assertEqual(len(committed), 10)
        self.assertEqual(uncommitted, [])
        self.assertEqual(blob.download_blob(max_concurrency=2).readall(), data)
        staged = self.c.get_blob_client("staged")
        staged.stage_block("YmxvY2stMQ==", b"one,")
        staged.stage_block("YmxvY2stMg==", b"two")
        committed, uncommitted = staged.get_block_list("all")
        self.assertEqual(len(uncommitted), 2)
        with self.assertRaises(ResourceNotFoundError):
            staged.download_blob()
        staged.commit_block_list([BlobBlock("YmxvY2stMQ=="), BlobBlock("YmxvY2stMg==")])
        self.assertEqual(staged.download_blob().readall(), b"one,two")
        with self.assertRaises(HttpResponseError) as e:
            staged.commit_block_list([BlobBlock("bWlzc2luZw==")])
        self.assertEqual(e.exception.error_code, "InvalidBlockList")

    def test_list_with_prefix_delimiter_and_pages(self):
        for n in ["a/1", "a/2", "a/b/3", "b/4", "c"]:
            self.c.get_blob_client(n).upload_blob(n.encode())
        self.assertEqual([b.name for b in self.c.list_blobs()], ["a/1", "a/2", "a/b/3", "b/4", "c"])
        self.assertEqual([b.name for b in self.c.list_blobs(name_starts_with="a/")], ["a/1", "a/2", "a/b/3"])
        walked = [b.name for b in self.c.walk_blobs(delimiter="/")]
        self.assertEqual(walked, ["a/", "b/", "c"])
        pages = list(self.c.list_blobs(results_per_page=2).by_page())
        self.assertEqual([len(list(p)) for p in pages], [2, 2, 1])
        self.c.get_blob_client("c").set_blob_metadata({"colour": "red"})
        with_md = {b.name: b.metadata for b in self.c.list_blobs(include=["metadata"])}
        self.assertEqual(with_md["c"], {"colour": "red"})
        without = {b.name: b.metadata for b in self.c.list_blobs()}
        self.assertFalse(without["c"], "metadata only when asked for")

    def test_unsupported_features_say_so(self):
        b = self.c.get_blob_client("p")
        with self.assertRaises(HttpResponseError) as e:
            b.create_page_blob(1024)
        self.assertEqual(e.exception.status_code, 501)
        self.assertIn("block blobs only", e.exception.message)


class PublicAndPolicyTest(unittest.TestCase):
    def setUp(self):
        self.account, self.key, self.endpoint = parts(CONN)
        self.svc = BlobServiceClient.from_connection_string(CONN)
        self.name = fresh("pub")
        self.c = self.svc.create_container(self.name)
        self.c.get_blob_client("page.html").upload_blob(b"<h1>hi</h1>")

    def tearDown(self):
        self.c.delete_container()

    def anonymous(self, path):
        try:
            with urllib.request.urlopen(f"{self.endpoint}/{self.name}{path}") as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def test_public_access_levels(self):
        self.assertEqual(self.anonymous("/page.html")[0], 404, "private by default")
        self.c.set_container_access_policy(signed_identifiers={}, public_access=PublicAccess.Blob)
        self.assertEqual(self.c.get_container_access_policy()["public_access"], "blob")
        self.assertEqual(self.anonymous("/page.html"), (200, b"<h1>hi</h1>"))
        self.assertEqual(self.anonymous("?restype=container&comp=list")[0], 404, "blob level does not list")
        self.c.set_container_access_policy(signed_identifiers={}, public_access=PublicAccess.Container)
        status, body = self.anonymous("?restype=container&comp=list")
        self.assertEqual(status, 200)
        self.assertIn(b"<Name>page.html</Name>", body)
        # Anonymous callers never write.
        req = urllib.request.Request(f"{self.endpoint}/{self.name}/x", data=b"x", method="PUT", headers={"x-ms-blob-type": "BlockBlob"})
        with self.assertRaises(urllib.error.HTTPError):
            urllib.request.urlopen(req)
        # A container made again with the same name starts private.
        self.c.delete_container()
        self.c = self.svc.create_container(self.name)
        self.c.get_blob_client("page.html").upload_blob(b"again")
        self.assertEqual(self.anonymous("/page.html")[0], 404)

    def test_stored_access_policies_grant_and_revoke(self):
        policy = AccessPolicy(permission=BlobSasPermissions(read=True), expiry=future(), start=None)
        self.c.set_container_access_policy(signed_identifiers={"readers": policy})
        ids = self.c.get_container_access_policy()["signed_identifiers"]
        self.assertEqual([i.id for i in ids], ["readers"])
        sas = generate_blob_sas(self.account, self.name, "page.html", account_key=self.key, policy_id="readers")
        url = f"{self.endpoint}/{self.name}/page.html?{sas}"
        self.assertEqual(BlobClient.from_blob_url(url).download_blob().readall(), b"<h1>hi</h1>")
        with self.assertRaises(HttpResponseError):
            BlobClient.from_blob_url(url).upload_blob(b"x", overwrite=True)
        # Removing the policy revokes every token naming it.
        self.c.set_container_access_policy(signed_identifiers={})
        with self.assertRaises(ClientAuthenticationError):
            BlobClient.from_blob_url(url).download_blob()
        too_many = {f"p{i}": policy for i in range(6)}
        with self.assertRaises((HttpResponseError, ValueError)):
            self.c.set_container_access_policy(signed_identifiers=too_many)


class ServicePropertiesTest(unittest.TestCase):
    def test_cors_rules_round_trip_and_answer_preflights(self):
        svc = BlobServiceClient.from_connection_string(CONN)
        rule = CorsRule(["https://app.example"], ["GET", "PUT"], allowed_headers=["x-ms-*", "content-type"],
                        exposed_headers=["x-ms-*"], max_age_in_seconds=300)
        svc.set_service_properties(cors=[rule])
        props = svc.get_service_properties()
        self.assertEqual(len(props["cors"]), 1)
        self.assertEqual(props["cors"][0].allowed_origins, "https://app.example")
        _, _, endpoint = parts(CONN)
        pre = urllib.request.Request(f"{endpoint}/any/blob", method="OPTIONS", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "x-ms-blob-type,content-type"})
        with urllib.request.urlopen(pre) as r:
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers["Access-Control-Allow-Origin"], "https://app.example")
            self.assertIn("PUT", r.headers["Access-Control-Allow-Methods"])
            self.assertEqual(r.headers["Access-Control-Max-Age"], "300")
        bad = urllib.request.Request(f"{endpoint}/any/blob", method="OPTIONS", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "PUT"})
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad)
        self.assertEqual(e.exception.code, 403)
        self.assertEqual(e.exception.headers["x-ms-error-code"], "CorsPreflightFailure")
        with self.assertRaises(HttpResponseError):
            svc.set_service_properties(cors=[rule] * 6)
        svc.set_service_properties(cors=[])
        self.assertEqual(svc.get_service_properties()["cors"], [])


class BlobAuthTest(unittest.TestCase):
    def setUp(self):
        self.account, self.key, self.endpoint = parts(CONN)
        self.svc = BlobServiceClient.from_connection_string(CONN)
        self.name = fresh("auth")
        self.c = self.svc.create_container(self.name)
        self.c.get_blob_client("secret.txt").upload_blob(b"secret")

    def tearDown(self):
        self.c.delete_container()

    def test_a_browser_upload_with_a_blob_sas(self):
        sas = generate_blob_sas(self.account, self.name, "upload.png", account_key=self.key,
                                permission=BlobSasPermissions(create=True, write=True), expiry=future())
        url = f"{self.endpoint}/{self.name}/upload.png?{sas}"
        BlobClient.from_blob_url(url).upload_blob(b"\x89PNG...")
        self.assertEqual(self.c.get_blob_client("upload.png").download_blob().readall(), b"\x89PNG...")
        with self.assertRaises(HttpResponseError) as e:
            BlobClient.from_blob_url(url).download_blob()
        self.assertEqual(e.exception.error_code, "AuthorizationPermissionMismatch")
        other = f"{self.endpoint}/{self.name}/secret.txt?{sas}"
        with self.assertRaises(ClientAuthenticationError):
            BlobClient.from_blob_url(other).upload_blob(b"overwrite", overwrite=True)
        self.assertEqual(self.c.get_blob_client("secret.txt").download_blob().readall(), b"secret")

    def test_a_container_sas_reads_and_lists(self):
        sas = generate_container_sas(self.account, self.name, account_key=self.key,
                                     permission=ContainerSasPermissions(read=True, list=True), expiry=future())
        from azure.storage.blob import ContainerClient
        reader = ContainerClient.from_container_url(f"{self.endpoint}/{self.name}?{sas}")
        self.assertEqual([b.name for b in reader.list_blobs()], ["secret.txt"])
        self.assertEqual(reader.get_blob_client("secret.txt").download_blob().readall(), b"secret")
        with self.assertRaises(HttpResponseError) as e:
            reader.get_blob_client("new").upload_blob(b"x")
        self.assertEqual(e.exception.status_code, 403)

    def test_anonymous_reads_of_a_private_container_are_not_found(self):
        # (public containers: PublicAndPolicyTest)
        with self.assertRaises(ResourceNotFoundError):
            BlobClient.from_blob_url(f"{self.endpoint}/{self.name}/secret.txt").download_blob()

    def test_other_accounts_cannot_reach_it(self):
        other_account, other_key, _ = parts(OTHER)
        cross = BlobClient.from_blob_url(f"{self.endpoint}/{self.name}/secret.txt",
                                         credential={"account_name": other_account, "account_key": other_key})
        with self.assertRaises(ClientAuthenticationError):
            cross.download_blob()
        with self.assertRaises(ResourceNotFoundError):
            BlobServiceClient.from_connection_string(OTHER).get_container_client(self.name).get_container_properties()


class CopyTest(unittest.TestCase):
    """Copy Blob and Copy Blob From URL, within one account and across the host's accounts."""

    def setUp(self):
        self.account, self.key, self.endpoint = parts(CONN)
        self.svc = BlobServiceClient.from_connection_string(CONN)
        self.name = fresh("copy")
        self.c = self.svc.create_container(self.name)
        self.src = self.c.get_blob_client("src.txt")
        self.src.upload_blob(b"copy me", metadata={"origin": "here"},
                             content_settings=ContentSettings(content_type="text/plain"))
        self.other = BlobServiceClient.from_connection_string(OTHER)
        self.oc = self.other.create_container(fresh("dest"))

    def tearDown(self):
        self.c.delete_container()
        self.oc.delete_container()

    def sas(self, key=None, **perms):
        return generate_blob_sas(self.account, self.name, "src.txt", account_key=key or self.key,
                                 permission=BlobSasPermissions(**perms), expiry=future())

    def test_copy_blob_in_one_account_and_its_status(self):
        # Within one account the destination's key authorizes the source.
        dst = self.c.get_blob_client("dst.txt")
        started = dst.start_copy_from_url(self.src.url)
        self.assertEqual(started["copy_status"], "success")
        props = dst.get_blob_properties()
        self.assertEqual(dst.download_blob().readall(), b"copy me")
        self.assertEqual(props.metadata, {"origin": "here"})
        self.assertEqual(props.content_settings.content_type, "text/plain")
        self.assertEqual(props.content_settings.content_md5, self.src.get_blob_properties().content_settings.content_md5)
        self.assertEqual(props.copy.id, started["copy_id"])
        self.assertEqual(props.copy.status, "success")
        self.assertEqual(props.copy.source, self.src.url)
        self.assertEqual(props.copy.progress, "7/7")
        self.assertIsNotNone(props.copy.completion_time)
        listed = [b for b in self.c.list_blobs(include=["copy"]) if b.name == "dst.txt"]
        self.assertEqual(listed[0].copy.id, started["copy_id"])
        # Given metadata replaces the source's.
        dst.start_copy_from_url(self.src.url, metadata={"mine": "yes"})
        self.assertEqual(dst.get_blob_properties().metadata, {"mine": "yes"})
        # Nothing is ever pending, so there is nothing to abort.
        with self.assertRaises(HttpResponseError) as e:
            dst.abort_copy(started["copy_id"])
        self.assertEqual(e.exception.error_code, "NoPendingCopyOperation")
        # Setting properties forgets the copy, as Azure does.
        dst.set_http_headers(ContentSettings(content_type="text/csv"))
        self.assertIsNone(dst.get_blob_properties().copy.id)

    def test_copy_conditions(self):
        dst = self.c.get_blob_client("dst.txt")
        with self.assertRaises(HttpResponseError) as e:
            dst.start_copy_from_url(self.src.url, source_etag='"0x8D0000000000000000"',
                                    source_match_condition=MatchConditions.IfNotModified)
        self.assertEqual(e.exception.status_code, 412)
        self.assertEqual(e.exception.error_code, "SourceConditionNotMet")
        dst.upload_blob(b"old")
        with self.assertRaises(HttpResponseError) as e:
            dst.start_copy_from_url(self.src.url, etag='"0x8D0000000000000000"',
                                    match_condition=MatchConditions.IfNotModified)
        self.assertEqual(e.exception.error_code, "ConditionNotMet")
        self.assertEqual(dst.download_blob().readall(), b"old", "a refused copy changes nothing")
        with self.assertRaises(ResourceNotFoundError) as e:
            dst.start_copy_from_url(f"{self.endpoint}/{self.name}/missing.txt")
        self.assertEqual(e.exception.error_code, "CannotVerifyCopySource")

    def test_copy_blob_from_url_needs_the_source_authorized_in_its_url(self):
        dst = self.c.get_blob_client("sync.txt")
        with self.assertRaises(ResourceNotFoundError) as e:
            dst.start_copy_from_url(self.src.url, requires_sync=True)
        self.assertEqual(e.exception.error_code, "CannotVerifyCopySource")
        done = dst.start_copy_from_url(f"{self.src.url}?{self.sas(read=True)}", requires_sync=True)
        self.assertEqual(done["copy_status"], "success")
        self.assertEqual(dst.download_blob().readall(), b"copy me")
        self.assertIn("?", dst.get_blob_properties().copy.source, "the source as given")

    def test_across_accounts_only_with_a_sas_of_the_source_account(self):
        dst = self.oc.get_blob_client("copied.txt")
        other_account, other_key, _ = parts(OTHER)
        # The destination account's key is no key to the source.
        with self.assertRaises(ResourceNotFoundError) as e:
            dst.start_copy_from_url(self.src.url)
        self.assertEqual(e.exception.error_code, "CannotVerifyCopySource")
        # Nor is a SAS signed with it, or one without read.
        for bad in (self.sas(key=other_key, read=True), self.sas(write=True)):
            with self.assertRaises(ResourceNotFoundError):
                dst.start_copy_from_url(f"{self.src.url}?{bad}")
        self.assertEqual([b.name for b in self.oc.list_blobs()], [], "refused copies wrote nothing")
        # A read SAS of the source account works, for both kinds of copy.
        for sync in (False, True):
            dst.start_copy_from_url(f"{self.src.url}?{self.sas(read=True)}", requires_sync=sync)
            self.assertEqual(dst.download_blob().readall(), b"copy me")
        # A public container needs no SAS.
        self.c.set_container_access_policy(signed_identifiers={}, public_access=PublicAccess.BLOB)
        self.oc.get_blob_client("public.txt").start_copy_from_url(self.src.url)
        self.assertEqual(self.oc.get_blob_client("public.txt").download_blob().readall(), b"copy me")

    def test_the_host_fetches_no_other_url(self):
        dst = self.c.get_blob_client("dst.txt")
        here = urllib.parse.urlsplit(self.src.url)
        another_port = f"{here.scheme}://{here.hostname}:{here.port + 1}{here.path}"
        for url in ("http://169.254.169.254/latest/meta-data", "http://example.com/acct/c/b", another_port):
            with self.assertRaises(HttpResponseError) as e:
                dst.start_copy_from_url(url)
            self.assertEqual(e.exception.error_code, "CannotVerifyCopySource", url)
        with self.assertRaises(HttpResponseError) as e:
            dst.start_copy_from_url("not a url")
        self.assertEqual(e.exception.status_code, 400)
        with self.assertRaises(ResourceNotFoundError):
            dst.get_blob_properties()


if __name__ == "__main__":
    unittest.main(verbosity=2)
