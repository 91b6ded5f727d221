"""The Table service of a running rolehost host, driven by the official Azure SDK for Python
(azure-data-tables). Run by host/cli/tests/rest_sdk.rs (see test_queue.py for its environment).
"""

import datetime
import os
import unittest
import uuid

from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import (
    EdmType,
    EntityProperty,
    TableAccessPolicy,
    TableClient,
    TableSasPermissions,
    TableServiceClient,
    TableTransactionError,
    UpdateMode,
    generate_table_sas,
)

CONN = os.environ["ROLEHOST_CONNECTION_STRING"]
OTHER = os.environ["ROLEHOST_OTHER_CONNECTION_STRING"]


def parts(conn):
    d = dict(p.split("=", 1) for p in conn.split(";") if p)
    return d["AccountName"], d["AccountKey"], d["TableEndpoint"]


def fresh(prefix="t"):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class TableTest(unittest.TestCase):
    def setUp(self):
        self.svc = TableServiceClient.from_connection_string(CONN)
        self.name = fresh()
        self.t = self.svc.create_table(self.name)

    def tearDown(self):
        try:
            self.svc.delete_table(self.name)
        except ResourceNotFoundError:
            pass

    def test_tables(self):
        with self.assertRaises(ResourceExistsError) as e:
            self.svc.create_table(self.name)
        self.assertEqual(e.exception.error_code, "TableAlreadyExists")
        names = [t.name for t in self.svc.query_tables(f"TableName eq '{self.name}'")]
        self.assertEqual(names, [self.name])
        self.assertIn(self.name, [t.name for t in self.svc.list_tables()])
        other = fresh("x")
        self.svc.create_table_if_not_exists(other)
        self.svc.delete_table(other)
        with self.assertRaises(HttpResponseError) as e:
            self.svc.create_table("1bad")
        self.assertEqual(e.exception.status_code, 400)

    def test_types_round_trip(self):
        when = datetime.datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=datetime.timezone.utc)
        guid = uuid.uuid4()
        entity = {
            "PartitionKey": "p", "RowKey": "r",
            "Name": "Ada", "Age": 36, "Big": EntityProperty(2**40, EdmType.INT64),
            "Ratio": 0.5, "Whole": 2.0, "Ok": True, "When": when, "Id": guid, "Raw": b"\x00\x01\xff",
        }
        self.t.create_entity(entity)
        got = self.t.get_entity("p", "r")
        self.assertEqual(got["Name"], "Ada")
        self.assertEqual(got["Age"], 36)
        self.assertEqual(got["Big"].value if hasattr(got["Big"], "value") else got["Big"], 2**40)
        self.assertEqual(got["Ratio"], 0.5)
        self.assertEqual(float(got["Whole"]), 2.0)
        self.assertIs(got["Ok"], True)
        self.assertEqual(got["When"], when)
        self.assertEqual(got["Id"], guid)
        self.assertEqual(got["Raw"], b"\x00\x01\xff")
        self.assertTrue(got.metadata["etag"])
        self.assertIsNotNone(got.metadata["timestamp"])

    def test_insert_update_merge_upsert_delete_with_etags(self):
        self.t.create_entity({"PartitionKey": "p", "RowKey": "1", "a": 1, "b": 2})
        # create_entity re-raises the transport's error (an SDK quirk): read the code off it.
        with self.assertRaises(ResourceExistsError) as e:
            self.t.create_entity({"PartitionKey": "p", "RowKey": "1"})
        self.assertEqual(e.exception.response.headers["x-ms-error-code"], "EntityAlreadyExists")
        first = self.t.get_entity("p", "1")
        self.t.update_entity({"PartitionKey": "p", "RowKey": "1", "c": 3}, mode=UpdateMode.MERGE)
        merged = self.t.get_entity("p", "1")
        self.assertEqual((merged["a"], merged["b"], merged["c"]), (1, 2, 3))
        # A stale ETag is refused and changes nothing.
        with self.assertRaises(ResourceModifiedError) as e:
            self.t.update_entity({"PartitionKey": "p", "RowKey": "1", "z": 0}, mode=UpdateMode.REPLACE,
                                 etag=first.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        self.assertEqual(e.exception.status_code, 412)
        self.assertEqual(e.exception.error_code, "UpdateConditionNotSatisfied")
        self.t.update_entity({"PartitionKey": "p", "RowKey": "1", "only": "this"}, mode=UpdateMode.REPLACE,
                             etag=merged.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        replaced = self.t.get_entity("p", "1")
        self.assertNotIn("a", replaced)
        self.assertEqual(replaced["only"], "this")
        with self.assertRaises(ResourceNotFoundError):
            self.t.update_entity({"PartitionKey": "p", "RowKey": "missing", "x": 1})
        self.t.upsert_entity({"PartitionKey": "p", "RowKey": "2", "x": 1}, mode=UpdateMode.REPLACE)
        self.t.upsert_entity({"PartitionKey": "p", "RowKey": "2", "y": 2}, mode=UpdateMode.MERGE)
        up = self.t.get_entity("p", "2")
        self.assertEqual((up["x"], up["y"]), (1, 2))
        with self.assertRaises(ResourceModifiedError):
            self.t.delete_entity("p", "2", etag=first.metadata["etag"], match_condition=MatchConditions.IfNotModified)
        self.t.delete_entity("p", "2")
        with self.assertRaises(ResourceNotFoundError) as e:
            self.t.get_entity("p", "2")
        self.assertEqual(e.exception.error_code, "ResourceNotFound")

    def test_queries_filter_select_top_and_continuation(self):
        for i in range(30):
            self.t.create_entity({"PartitionKey": f"p{i % 3}", "RowKey": f"{i:03}", "n": i, "even": i % 2 == 0})
        got = list(self.t.query_entities("PartitionKey eq 'p1' and n ge 10"))
        self.assertEqual([e["n"] for e in got], [10, 13, 16, 19, 22, 25, 28])
        sel = list(self.t.query_entities("even eq true", select=["n"]))
        self.assertEqual(len(sel), 15)
        self.assertNotIn("even", sel[0])
        pages = list(self.t.list_entities(results_per_page=7).by_page())
        self.assertEqual([len(list(p)) for p in pages], [7, 7, 7, 7, 2])
        params = list(self.t.query_entities("n lt @top", parameters={"top": 3}))
        self.assertEqual(sorted(e["n"] for e in params), [0, 1, 2])
        with self.assertRaises(HttpResponseError) as e:
            list(self.t.query_entities("n eqq 3"))
        self.assertEqual(e.exception.status_code, 400)

    def test_transactions(self):
        ops = [("create", {"PartitionKey": "b", "RowKey": str(i), "v": i}) for i in range(5)]
        self.t.submit_transaction(ops)
        self.assertEqual(len(list(self.t.query_entities("PartitionKey eq 'b'"))), 5)
        mixed = [
            ("update", {"PartitionKey": "b", "RowKey": "0", "v": 100}, {"mode": "merge"}),
            ("upsert", {"PartitionKey": "b", "RowKey": "9", "v": 9}),
            ("delete", {"PartitionKey": "b", "RowKey": "1"}),
        ]
        self.t.submit_transaction(mixed)
        self.assertEqual(self.t.get_entity("b", "0")["v"], 100)
        self.assertEqual(self.t.get_entity("b", "9")["v"], 9)
        # All or nothing: the second insert collides, so the first is not applied either.
        failing = [
            ("create", {"PartitionKey": "b", "RowKey": "new", "v": 1}),
            ("create", {"PartitionKey": "b", "RowKey": "2", "v": 1}),
        ]
        with self.assertRaises(TableTransactionError) as e:
            self.t.submit_transaction(failing)
        self.assertEqual(e.exception.index, 1)
        self.assertEqual(e.exception.error_code, "EntityAlreadyExists")
        with self.assertRaises(ResourceNotFoundError):
            self.t.get_entity("b", "new")
        with self.assertRaises(TableTransactionError) as e:
            self.t.submit_transaction([("create", {"PartitionKey": "b", "RowKey": "d"}), ("delete", {"PartitionKey": "b", "RowKey": "d"})])
        self.assertEqual(e.exception.error_code, "InvalidDuplicateRow")

    def test_metadata_levels(self):
        self.t.create_entity({"PartitionKey": "p", "RowKey": "m", "Big": EntityProperty(5, EdmType.INT64)})
        for level in ("nometadata", "minimalmetadata", "fullmetadata"):
            c = TableClient.from_connection_string(CONN, self.name)
            got = c.get_entity("p", "m", headers={"Accept": f"application/json;odata={level}"})
            self.assertEqual(got["PartitionKey"], "p", level)


class TableAuthTest(unittest.TestCase):
    def setUp(self):
        self.account, self.key, self.endpoint = parts(CONN)
        self.svc = TableServiceClient.from_connection_string(CONN)
        self.name = fresh("auth")
        self.t = self.svc.create_table(self.name)
        for pk in "abc":
            self.t.create_entity({"PartitionKey": pk, "RowKey": "1", "v": pk})

    def tearDown(self):
        self.svc.delete_table(self.name)

    def test_a_wrong_key_and_another_account(self):
        wrong = TableClient(self.endpoint, self.name, credential=AzureNamedKeyCredential(self.account, parts(OTHER)[1]))
        with self.assertRaises(HttpResponseError) as e:
            wrong.create_entity({"PartitionKey": "z", "RowKey": "1"})
        self.assertEqual(e.exception.status_code, 403)
        self.assertEqual(e.exception.response.headers["x-ms-error-code"], "AuthenticationFailed")
        with self.assertRaises(ClientAuthenticationError):
            wrong.get_entity("a", "1")
        with self.assertRaises(ResourceNotFoundError):
            self.t.get_entity("z", "1")
        other = TableServiceClient.from_connection_string(OTHER).get_table_client(self.name)
        with self.assertRaises(ResourceNotFoundError):
            other.get_entity("a", "1")

    def test_stored_access_policies_grant_and_revoke(self):
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        policy = TableAccessPolicy(permission="r", expiry=expiry)
        self.t.set_table_access_policy(signed_identifiers={"readers": policy})
        self.assertEqual(list(self.t.get_table_access_policy()), ["readers"])
        sas = generate_table_sas(AzureNamedKeyCredential(self.account, self.key), self.name, policy_id="readers")
        c = TableClient(self.endpoint, self.name, credential=AzureSasCredential(sas))
        self.assertEqual(c.get_entity("b", "1")["v"], "b")
        with self.assertRaises(HttpResponseError) as e:
            c.create_entity({"PartitionKey": "b", "RowKey": "9"})
        self.assertEqual(e.exception.status_code, 403)
        self.t.set_table_access_policy(signed_identifiers={})
        with self.assertRaises(HttpResponseError) as e:
            c.get_entity("b", "1")
        self.assertEqual(e.exception.status_code, 403, "revoked with its policy")

    def test_a_table_sas_held_to_a_key_range(self):
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
        sas = generate_table_sas(
            AzureNamedKeyCredential(self.account, self.key), self.name,
            permission=TableSasPermissions(read=True, add=True), expiry=expiry,
            start_pk="b", end_pk="b",
        )
        c = TableClient(self.endpoint, self.name, credential=AzureSasCredential(sas))
        self.assertEqual(c.get_entity("b", "1")["v"], "b")
        self.assertEqual([e["v"] for e in c.list_entities()], ["b"])
        with self.assertRaises(HttpResponseError) as e:
            c.get_entity("a", "1")
        self.assertEqual(e.exception.status_code, 403)
        c.create_entity({"PartitionKey": "b", "RowKey": "2"})
        with self.assertRaises(HttpResponseError) as e:
            c.create_entity({"PartitionKey": "c", "RowKey": "2"})
        self.assertEqual(e.exception.status_code, 403)
        with self.assertRaises(HttpResponseError) as e:
            c.delete_entity("b", "2")
        self.assertEqual(e.exception.error_code, "AuthorizationPermissionMismatch")


if __name__ == "__main__":
    unittest.main(verbosity=2)
