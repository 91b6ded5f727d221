// A smoke test of each service of a running rolehost host with the official Azure SDKs for
// JavaScript (@azure/storage-blob, @azure/storage-queue, @azure/data-tables), run by
// host/cli/tests/rest_sdk.rs with ROLEHOST_CONNECTION_STRING set. Exits non-zero on failure.
import assert from "node:assert/strict";
import { BlobServiceClient } from "@azure/storage-blob";
import { QueueServiceClient } from "@azure/storage-queue";
import { TableClient, TableServiceClient } from "@azure/data-tables";

const conn = process.env.ROLEHOST_CONNECTION_STRING;
const suffix = Math.random().toString(16).slice(2, 10);

// Blob: container, upload, download, list, properties, delete.
const blobs = BlobServiceClient.fromConnectionString(conn);
const container = blobs.getContainerClient(`js-${suffix}`);
await container.create();
const blob = container.getBlockBlobClient("hello.txt");
await blob.upload("hello from node", 15, { blobHTTPHeaders: { blobContentType: "text/plain" } });
const got = await blob.downloadToBuffer();
assert.equal(got.toString(), "hello from node");
const props = await blob.getProperties();
assert.equal(props.contentType, "text/plain");
assert.equal(props.contentLength, 15);
const names = [];
for await (const b of container.listBlobsFlat()) names.push(b.name);
assert.deepEqual(names, ["hello.txt"]);
await assert.rejects(container.create(), (e) => e.statusCode === 409 && e.code === "ContainerAlreadyExists");
await container.delete();

// Queue: create, send, receive, delete.
const queues = QueueServiceClient.fromConnectionString(conn);
const queue = queues.getQueueClient(`js-${suffix}`);
await queue.create();
await queue.sendMessage("job one");
const received = await queue.receiveMessages({ numberOfMessages: 1, visibilityTimeout: 30 });
assert.equal(received.receivedMessageItems.length, 1);
const m = received.receivedMessageItems[0];
assert.equal(m.messageText, "job one");
assert.equal(m.dequeueCount, 1);
await queue.deleteMessage(m.messageId, m.popReceipt);
await assert.rejects(queue.deleteMessage(m.messageId, m.popReceipt), (e) => e.statusCode === 404);
const peeked = await queue.peekMessages();
assert.equal(peeked.peekedMessageItems.length, 0);
await queue.delete();

// Table: create, insert, get, query, merge, batch, delete.
const tableName = `js${suffix}`;
await TableServiceClient.fromConnectionString(conn, { allowInsecureConnection: true }).createTable(tableName);
const table = TableClient.fromConnectionString(conn, tableName, { allowInsecureConnection: true });
await table.createEntity({ partitionKey: "p", rowKey: "1", name: "Ada", age: 36 });
const e = await table.getEntity("p", "1");
assert.equal(e.name, "Ada");
assert.equal(e.age, 36);
await table.updateEntity({ partitionKey: "p", rowKey: "1", city: "London" }, "Merge");
const merged = await table.getEntity("p", "1");
assert.equal(merged.city, "London");
assert.equal(merged.name, "Ada");
await table.submitTransaction([
  ["create", { partitionKey: "p", rowKey: "2", n: 2 }],
  ["create", { partitionKey: "p", rowKey: "3", n: 3 }],
]);
const rows = [];
for await (const r of table.listEntities({ queryOptions: { filter: "PartitionKey eq 'p' and RowKey ge '2'" } })) rows.push(r.rowKey);
assert.deepEqual(rows, ["2", "3"]);
await table.deleteTable();

console.log("js smoke: blob, queue and table OK");
