// Expose a guest web server on the host, move it to another port while it runs, and
// show the connection log. What `npm start` runs.
//   node examples/publish-web-server.mjs        (after npm run build)
import { Sandbox, Policy } from 'tsibox';

const sb = await Sandbox.start({
  // busybox httpd serves /www in the guest; the guest waits until we are done.
  argv: ['sh', '-c', 'mkdir -p /www && echo "hello from the guest" > /www/index.html && httpd -f -p 8080 -h /www'],
  network: {
    mode: 'tsi',
    // Nothing goes out; host clients may reach the published port.
    policy: new Policy({ default: 'deny', rules: [{ action: 'allow', direction: 'inbound', name: 'published ports' }] }),
  },
  timeoutMs: 120_000,
});
sb.on('connection', (e) => {
  console.log(`connection: ${e.direction} ${e.src ?? '-'} -> ${e.dst ?? '-'} ${e.decision} (${e.bytesToGuest} bytes in, ${e.bytesFromGuest} out, ${e.closeReason})`);
});
try {
  // The host listens once the guest's httpd does; the OS picks the port.
  const first = await sb.ports.publish({ guestPort: 8080 });
  console.log(`published guest port 8080 on 127.0.0.1:${first.hostPort}`);
  console.log(`GET :${first.hostPort} -> ${(await (await fetch(`http://127.0.0.1:${first.hostPort}/`)).text()).trim()}`);

  await sb.ports.unpublish({ guestPort: 8080 });
  const refused = await fetch(`http://127.0.0.1:${first.hostPort}/`).then(() => 'served', (e) => e.cause?.code ?? String(e));
  console.log(`after unpublish, :${first.hostPort} -> ${refused}`);

  const second = await sb.ports.publish({ guestPort: 8080 });
  console.log(`published again on 127.0.0.1:${second.hostPort}`);
  console.log(`GET :${second.hostPort} -> ${(await (await fetch(`http://127.0.0.1:${second.hostPort}/`)).text()).trim()}`);
} finally {
  const r = await sb.stop();
  console.log(`sandbox stopped (engine ${r.engine}, ${Math.round(r.ms)} ms)`);
}
