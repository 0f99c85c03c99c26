// Subscribes to "news" on a local wsd (`make run`) and prints what arrives.
//   node --experimental-websocket examples/node.mjs [json|msgpack]   (Node 22+: no flag needed)
// Then publish: curl -H 'Authorization: apikey dev' -d '{"channel":"news","data":{"headline":"hi"}}' localhost:9090/api/publish
import { Client } from "../dist/index.js";

const client = new Client(process.env.WSD_URL ?? "ws://localhost:8080/ws", {
  protocol: process.argv[2] === "msgpack" ? "msgpack" : "json",
  backoff: { min: 500, max: 20000, factor: 2 },
});
client.on("connected", (e) => console.log("connected with", e.protocol));
client.on("disconnected", (e) =>
  console.log("disconnected", e.code, e.reason, e.reconnect ? `(reconnecting in ${e.delay} ms)` : ""),
);
const news = client.subscribe("news");
news.on("subscribed", (e) => console.log("subscribed at", e.offset, e.recovering ? `recovered: ${e.recovered}` : ""));
news.on("publication", (p) => console.log(`#${p.offset}`, JSON.stringify(p.data)));
client.connect();

const history = await client.history("news", { limit: 5 });
console.log("last publications:", history.publications.map((p) => p.data));
