// The interop scenarios with the RabbitMQ Java client (com.rabbitmq:amqp-client, Debian's
// librabbitmq-client-java). Same protocol as the Python drivers (interop/clients/base.py):
//   java Scenarios run URL PREFIX SCENARIO...   -> {"start": s} then {"scenario": s, "obs"|"error"}
//   java Scenarios worker URL QUEUE             -> the consumer_killed worker
// No JSON library: the observations are Maps/Lists/Strings/Numbers written by json() below.

import com.rabbitmq.client.AMQP;
import com.rabbitmq.client.AuthenticationFailureException;
import com.rabbitmq.client.Channel;
import com.rabbitmq.client.Connection;
import com.rabbitmq.client.ConnectionFactory;
import com.rabbitmq.client.DefaultConsumer;
import com.rabbitmq.client.Envelope;
import com.rabbitmq.client.GetResponse;
import com.rabbitmq.client.LongString;
import com.rabbitmq.client.ShutdownSignalException;

import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStreamReader;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Date;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

public class Scenarios {
    static final int LARGE_SIZE = 5 * 1024 * 1024;
    static final int WORKER_PREFETCH = 10, WORKER_ACKS = 5, WORKER_HOLD = 15, KILLED_MESSAGES = 30;
    static final long SCENARIO_TIMEOUT_S = 40;

    String url, prefix;

    Scenarios(String url, String prefix) { this.url = url; this.prefix = prefix; }

    String name(String s) { return prefix + "." + s; }

    // -- helpers ---------------------------------------------------------------------------------
    static Connection connect(String url) throws Exception { return connect(url, -1); }

    static Connection connect(String url, int heartbeat) throws Exception {
        ConnectionFactory f = new ConnectionFactory();
        f.setUri(url);
        if (heartbeat >= 0) f.setRequestedHeartbeat(heartbeat);
        f.setAutomaticRecoveryEnabled(true);      // the 5.x default, as applications run it
        f.setConnectionTimeout(10000);
        return f.newConnection();
    }

    static void close(Connection c) {
        try { c.close(3000); } catch (Exception e) { c.abort(); }
    }

    static byte[] utf8(String s) { return s.getBytes(StandardCharsets.UTF_8); }

    static String str(byte[] b) { return new String(b, StandardCharsets.UTF_8); }

    static Object codeOf(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof ShutdownSignalException) {
                Object reason = ((ShutdownSignalException) t).getReason();
                if (reason instanceof AMQP.Channel.Close) return ((AMQP.Channel.Close) reason).getReplyCode();
                if (reason instanceof AMQP.Connection.Close) return ((AMQP.Connection.Close) reason).getReplyCode();
            }
        }
        return e.getClass().getSimpleName();
    }

    static String namedBy(String q) { return q.startsWith("amq.gen-") ? "server (amq.gen-)" : "client"; }

    static List<String> getAll(Channel ch, String q) throws IOException {
        List<String> out = new ArrayList<>();
        for (;;) {
            GetResponse r = ch.basicGet(q, true);
            if (r == null) return out;
            out.add(str(r.getBody()));
        }
    }

    static GetResponse waitGet(Channel ch, String q) throws Exception {
        long deadline = System.currentTimeMillis() + 5000;
        while (System.currentTimeMillis() < deadline) {
            GetResponse r = ch.basicGet(q, false);
            if (r != null) return r;
            Thread.sleep(50);
        }
        throw new TimeoutException("nothing arrived in " + q);
    }

    static List<Object> list(Object... xs) { return new ArrayList<>(Arrays.asList(xs)); }

    static Map<String, Object> map(Object... kv) {
        Map<String, Object> m = new LinkedHashMap<>();
        for (int i = 0; i < kv.length; i += 2) m.put((String) kv[i], kv[i + 1]);
        return m;
    }

    /** Header values as plain Java values: LongString -> String, nested tables and arrays too. */
    static Object plain(Object v) {
        if (v instanceof LongString) return v.toString();
        if (v instanceof Map) {
            Map<String, Object> out = new TreeMap<>();
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) out.put(e.getKey().toString(), plain(e.getValue()));
            return out;
        }
        if (v instanceof List) {
            List<Object> out = new ArrayList<>();
            for (Object x : (List<?>) v) out.add(plain(x));
            return out;
        }
        return v;
    }

    /** Deliveries of a consumer, taken one by one on the scenario's thread. */
    static class Inbox extends DefaultConsumer {
        final BlockingQueue<Object[]> q = new LinkedBlockingQueue<>();

        Inbox(Channel ch) { super(ch); }

        @Override
        public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties props, byte[] body) {
            q.add(new Object[]{env, props, body});
        }

        Object[] next() throws Exception {
            Object[] d = q.poll(10, TimeUnit.SECONDS);
            if (d == null) throw new TimeoutException("no delivery within 10 s");
            return d;
        }
    }

    // -- scenarios -------------------------------------------------------------------------------
    Object connect() throws Exception {
        Connection conn = connect(url);
        @SuppressWarnings("unchecked")
        Map<String, Object> caps = (Map<String, Object>) conn.getServerProperties().get("capabilities");
        TreeSet<String> on = new TreeSet<>();
        for (Map.Entry<String, Object> e : caps.entrySet()) if (Boolean.TRUE.equals(e.getValue())) on.add(e.getKey());
        Map<String, Object> obs = map("open", conn.isOpen(), "capabilities", new ArrayList<>(on));
        close(conn);
        URI u = new URI(url);
        String bad = url.replaceFirst("guest:guest@", "guest:wrong-password@");
        String badVhost = u.getScheme() + "://" + u.getRawUserInfo() + "@" + u.getHost() + ":" + u.getPort()
                + "/no-such-vhost-" + prefix;
        for (String[] kv : new String[][]{{"bad_password", bad}, {"bad_vhost", badVhost}}) {
            try {
                close(connect(kv[1]));
                obs.put(kv[0], "connected");
            } catch (AuthenticationFailureException e) {
                obs.put(kv[0], "ACCESS_REFUSED");
            } catch (Exception e) {
                Object code = codeOf(e);
                obs.put(kv[0], Integer.valueOf(403).equals(code) ? "ACCESS_REFUSED" : code);
            }
        }
        return obs;
    }

    Object exchanges() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        Map<String, Object> obs = new LinkedHashMap<>();
        // direct
        reset(ch, 2);
        ch.exchangeDeclare(name("direct"), "direct", false, true, null);
        ch.queueBind(name("q1"), name("direct"), "a");
        ch.queueBind(name("q1"), name("direct"), "b");
        ch.queueBind(name("q2"), name("direct"), "b");
        for (String rk : new String[]{"a", "b", "c"}) ch.basicPublish(name("direct"), rk, null, utf8(rk));
        obs.put("direct", collect(ch, 2));
        // fanout
        reset(ch, 2);
        ch.exchangeDeclare(name("fanout"), "fanout", false, true, null);
        ch.queueBind(name("q1"), name("fanout"), "");
        ch.queueBind(name("q2"), name("fanout"), "");
        for (String b : new String[]{"x", "y"}) ch.basicPublish(name("fanout"), "ignored", null, utf8(b));
        obs.put("fanout", collect(ch, 2));
        // topic
        reset(ch, 3);
        ch.exchangeDeclare(name("topic"), "topic", false, true, null);
        ch.queueBind(name("q1"), name("topic"), "a.*");
        ch.queueBind(name("q2"), name("topic"), "a.#");
        ch.queueBind(name("q3"), name("topic"), "#.c");
        for (String rk : new String[]{"a", "a.b", "a.b.c", "x.c", "b"}) ch.basicPublish(name("topic"), rk, null, utf8(rk));
        obs.put("topic", collect(ch, 3));
        // headers
        reset(ch, 2);
        ch.exchangeDeclare(name("headers"), "headers", false, true, null);
        Map<String, Object> all = new HashMap<>(map("x-match", "all", "h1", 1, "h2", 2));
        Map<String, Object> any = new HashMap<>(map("x-match", "any", "h1", 1, "h2", 2));
        ch.queueBind(name("q1"), name("headers"), "", all);
        ch.queueBind(name("q2"), name("headers"), "", any);
        Object[][] msgs = {{"h1", map("h1", 1)}, {"h1h2", map("h1", 1, "h2", 2)}, {"h3", map("h3", 3)}};
        for (Object[] m : msgs) {
            @SuppressWarnings("unchecked") Map<String, Object> h = (Map<String, Object>) m[1];
            ch.basicPublish(name("headers"), "", new AMQP.BasicProperties.Builder().headers(h).build(),
                    utf8((String) m[0]));
        }
        obs.put("headers", collect(ch, 2));
        // exchange to exchange
        reset(ch, 1);
        ch.exchangeDeclare(name("e2e-src"), "topic", false, true, null);
        ch.exchangeDeclare(name("e2e-dst"), "fanout", false, true, null);
        ch.exchangeBind(name("e2e-dst"), name("e2e-src"), "e.*");
        ch.queueBind(name("q1"), name("e2e-dst"), "");
        for (String rk : new String[]{"e.1", "f.1", "e.1.2"}) ch.basicPublish(name("e2e-src"), rk, null, utf8(rk));
        obs.put("e2e", collect(ch, 1));
        close(conn);
        return obs;
    }

    void reset(Channel ch, int count) throws IOException {
        for (int i = 1; i <= count; i++) {
            ch.queueDelete(name("q" + i));
            ch.queueDeclare(name("q" + i), false, true, false, null);
        }
    }

    Map<String, Object> collect(Channel ch, int count) throws IOException {
        Map<String, Object> out = new LinkedHashMap<>();
        for (int i = 1; i <= count; i++) out.put("q" + i, getAll(ch, name("q" + i)));
        return out;
    }

    Object publish_consume_ack() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String q = name("pca");
        ch.queueDeclare(q, false, true, false, null);
        for (int i = 0; i < 100; i++) {
            Map<String, Object> h = new HashMap<>(map("i", i, "s", "str", "b", true, "t", map("n", 1)));
            ch.basicPublish("", q, new AMQP.BasicProperties.Builder().contentType("text/plain")
                    .correlationId("c-" + i).messageId("m-" + i).appId("interop").type("t").deliveryMode(2)
                    .headers(h).build(), utf8(Integer.toString(i)));
        }
        ch.basicQos(10);
        Inbox inbox = new Inbox(ch);
        String tag = ch.basicConsume(q, false, inbox);
        List<Integer> got = new ArrayList<>();
        boolean redelivered = false;
        Map<String, Object> first = null;
        while (got.size() < 100) {
            Object[] d = inbox.next();
            Envelope env = (Envelope) d[0];
            AMQP.BasicProperties p = (AMQP.BasicProperties) d[1];
            if (first == null) {
                first = map("content_type", p.getContentType(), "correlation_id", p.getCorrelationId(),
                        "message_id", p.getMessageId(), "app_id", p.getAppId(), "type", p.getType(),
                        "delivery_mode", p.getDeliveryMode(), "headers", plain(p.getHeaders()));
            }
            got.add(Integer.parseInt(str((byte[]) d[2])));
            redelivered |= env.isRedeliver();
            ch.basicAck(env.getDeliveryTag(), false);
        }
        ch.basicCancel(tag);
        boolean inOrder = true;
        for (int i = 0; i < got.size(); i++) inOrder &= got.get(i) == i;
        long left = ch.queueDeclarePassive(q).getMessageCount();
        close(conn);
        return map("count", got.size(), "in_order", inOrder, "any_redelivered", redelivered, "props", first,
                "left", left);
    }

    Object nack_requeue() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String q = name("nack");
        ch.queueDeclare(q, false, true, false, null);
        for (int i = 1; i <= 5; i++) ch.basicPublish("", q, null, utf8("m" + i));
        ch.basicQos(5);
        Inbox inbox = new Inbox(ch);
        ch.basicConsume(q, false, inbox);
        List<Object> deliveries = new ArrayList<>();
        Map<String, Long> tags = new HashMap<>();
        take(inbox, 5, deliveries, tags);
        ch.basicAck(tags.get("m1"), false);
        ch.basicNack(tags.get("m2"), false, true);
        ch.basicAck(tags.get("m3"), false);
        ch.basicReject(tags.get("m4"), true);
        ch.basicAck(tags.get("m5"), false);
        take(inbox, 2, deliveries, tags);
        ch.basicNack(tags.get("m4"), true, true);
        take(inbox, 2, deliveries, tags);
        ch.basicAck(tags.get("m4"), true);
        long left = ch.queueDeclarePassive(q).getMessageCount();
        close(conn);
        return map("deliveries", deliveries, "left", left);
    }

    static void take(Inbox inbox, int count, List<Object> deliveries, Map<String, Long> tags) throws Exception {
        for (int i = 0; i < count; i++) {
            Object[] d = inbox.next();
            Envelope env = (Envelope) d[0];
            String body = str((byte[]) d[2]);
            deliveries.add(list(body, env.isRedeliver()));
            tags.put(body, env.getDeliveryTag());
        }
    }

    static Map<String, Object> deadInfo(GetResponse r) {
        Map<String, Object> h = r.getProps().getHeaders();
        if (h == null) h = new HashMap<>();
        List<Object> xd = new ArrayList<>();
        Object raw = h.get("x-death");
        if (raw instanceof List) {
            for (Object o : (List<?>) raw) {
                @SuppressWarnings("unchecked") Map<String, Object> e = (Map<String, Object>) plain(o);
                Map<String, Object> entry = map("count", e.get("count"), "reason", e.get("reason"),
                        "queue", e.get("queue"), "exchange", e.get("exchange"),
                        "routing-keys", e.get("routing-keys"), "time", e.containsKey("time"));
                if (e.containsKey("original-expiration")) entry.put("original-expiration", e.get("original-expiration"));
                xd.add(entry);
            }
        }
        return map("body", str(r.getBody()), "exchange", r.getEnvelope().getExchange(),
                "routing_key", r.getEnvelope().getRoutingKey(), "redelivered", r.getEnvelope().isRedeliver(),
                "expiration", r.getProps().getExpiration(), "x-death", xd, "x-first-death-reason", plain(h.get("x-first-death-reason")),
                "x-first-death-queue", plain(h.get("x-first-death-queue")),
                "x-first-death-exchange", plain(h.get("x-first-death-exchange")));
    }

    Object dead_letter() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String work = name("work"), dlx = name("dlx"), dlq = name("dlq");
        ch.exchangeDeclare(dlx, "direct", false, false, null);
        try {
            ch.queueDeclare(dlq, false, true, false, null);
            ch.queueBind(dlq, dlx, "dead");
            Map<String, Object> args = new HashMap<>(map("x-dead-letter-exchange", dlx,
                    "x-dead-letter-routing-key", "dead"));
            ch.queueDeclare(work, false, true, false, args);
            ch.basicPublish("", work, null, utf8("r1"));
            ch.basicPublish("", work, null, utf8("n1"));
            ch.basicReject(waitGet(ch, work).getEnvelope().getDeliveryTag(), false);
            ch.basicNack(waitGet(ch, work).getEnvelope().getDeliveryTag(), false, false);
            List<Object> dead = new ArrayList<>();
            for (int i = 0; i < 2; i++) {
                GetResponse r = waitGet(ch, dlq);
                dead.add(deadInfo(r));
                ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
                if (str(r.getBody()).equals("r1")) {
                    ch.basicPublish("", work, new AMQP.BasicProperties.Builder()
                            .headers(r.getProps().getHeaders()).build(), r.getBody());
                }
            }
            ch.basicReject(waitGet(ch, work).getEnvelope().getDeliveryTag(), false);
            GetResponse r = waitGet(ch, dlq);
            dead.add(deadInfo(r));
            ch.basicAck(r.getEnvelope().getDeliveryTag(), false);
            // reason maxlen: the head of a full x-max-length=1 queue; reason expired: a 50 ms expiration
            Map<String, Object> maxArgs = new HashMap<>(args);
            maxArgs.put("x-max-length", 1);
            ch.queueDeclare(name("maxlen"), false, true, false, maxArgs);
            ch.queueDeclare(name("ttl"), false, true, false, args);
            ch.basicPublish("", name("maxlen"), null, utf8("l1"));
            ch.basicPublish("", name("maxlen"), null, utf8("l2"));
            GetResponse d = waitGet(ch, dlq);
            dead.add(deadInfo(d));
            ch.basicAck(d.getEnvelope().getDeliveryTag(), false);
            ch.basicPublish("", name("ttl"), new AMQP.BasicProperties.Builder().expiration("50").build(), utf8("e1"));
            d = waitGet(ch, dlq);
            dead.add(deadInfo(d));
            ch.basicAck(d.getEnvelope().getDeliveryTag(), false);
            long left = ch.queueDeclarePassive(work).getMessageCount();
            return map("dead", dead, "work_left", left);
        } finally {
            try { conn.createChannel().exchangeDelete(dlx); } catch (Exception ignored) { }
            close(conn);
        }
    }

    Object confirms() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String q = name("confirms");
        ch.queueDeclare(q, false, true, false, null);
        ch.confirmSelect();
        for (int i = 0; i < 50; i++) {
            ch.basicPublish("", q, new AMQP.BasicProperties.Builder().deliveryMode(2).build(), utf8(Integer.toString(i)));
        }
        boolean allAcked = ch.waitForConfirms(10000);
        List<Integer> returns = new ArrayList<>();
        ch.addReturnListener((code, text, exchange, rk, props, body) -> returns.add(code));
        ch.basicPublish("", name("nowhere"), true, null, utf8("u"));
        boolean confirmed = ch.waitForConfirms(10000);
        Map<String, Object> unroutable = map("returned", !returns.isEmpty(),
                "reply_code", returns.isEmpty() ? null : returns.get(0), "confirmed", confirmed);
        Object missing;
        try {
            ch.basicPublish(name("no-such-exchange"), "k", null, utf8("x"));
            ch.waitForConfirmsOrDie(10000);
            missing = "published";
        } catch (Exception e) {
            missing = codeOf(e);
        }
        close(conn);
        return map("acked", allAcked ? 50 : -1, "nacked", allAcked ? 0 : -1, "unroutable_mandatory", unroutable,
                "missing_exchange", missing);
    }

    Object mandatory() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String x = name("x"), q = name("routed");
        ch.exchangeDeclare(x, "direct", false, true, null);
        ch.queueDeclare(q, false, true, false, null);
        ch.queueBind(q, x, "here");
        List<Object> returns = java.util.Collections.synchronizedList(new ArrayList<>());
        ch.addReturnListener((code, text, exchange, rk, props, body) -> returns.add(map("reply_code", code,
                "reply_text", text, "exchange", exchange, "routing_key", rk, "body", str(body))));
        ch.basicPublish(x, "nowhere", true, null, utf8("m1"));
        ch.basicPublish(x, "here", true, null, utf8("m2"));
        ch.basicPublish(x, "nowhere", false, null, utf8("m3"));
        ch.queueDeclarePassive(q);   // a round trip; the return listener runs on another thread
        long deadline = System.currentTimeMillis() + 2000;
        while (returns.isEmpty() && System.currentTimeMillis() < deadline) Thread.sleep(10);
        List<String> routed = getAll(ch, q);
        close(conn);
        return map("returns", new ArrayList<>(returns), "routed", routed);
    }

    Object basic_get() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String q = name("get");
        ch.queueDeclare(q, false, true, false, null);
        List<Object> gets = new ArrayList<>();
        get(ch, q, gets);
        for (int i = 1; i <= 3; i++) ch.basicPublish("", q, null, utf8("m" + i));
        ch.basicAck(get(ch, q, gets), false);
        ch.basicReject(get(ch, q, gets), true);
        ch.basicAck(get(ch, q, gets), false);
        ch.basicAck(get(ch, q, gets), false);
        get(ch, q, gets);
        close(conn);
        return map("gets", gets);
    }

    static long get(Channel ch, String q, List<Object> gets) throws IOException {
        GetResponse r = ch.basicGet(q, false);
        if (r == null) {
            gets.add(null);
            return -1;
        }
        gets.add(list(str(r.getBody()), r.getEnvelope().isRedeliver(), r.getMessageCount()));
        return r.getEnvelope().getDeliveryTag();
    }

    Object rpc(boolean direct) throws Exception {
        Connection server = connect(url);
        Channel sch = server.createChannel();
        String rq = name(direct ? "rpc-direct" : "rpc");
        sch.queueDeclare(rq, false, true, false, null);
        List<String> seen = java.util.Collections.synchronizedList(new ArrayList<>());
        sch.basicConsume(rq, false, new DefaultConsumer(sch) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body) throws IOException {
                seen.add(p.getReplyTo());
                sch.basicPublish("", p.getReplyTo(), new AMQP.BasicProperties.Builder()
                        .correlationId(p.getCorrelationId()).build(), utf8(str(body).toUpperCase()));
                sch.basicAck(env.getDeliveryTag(), false);
            }
        });
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        Map<String, Object> replies = new java.util.concurrent.ConcurrentSkipListMap<>();
        CountDownLatch three = new CountDownLatch(3);
        String replyTo = direct ? "amq.rabbitmq.reply-to" : ch.queueDeclare("", false, true, true, null).getQueue();
        ch.basicConsume(replyTo, true, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body) {
                replies.put(p.getCorrelationId(), str(body));
                three.countDown();
            }
        });
        for (int i = 0; i < 3; i++) {
            ch.basicPublish("", rq, new AMQP.BasicProperties.Builder().replyTo(replyTo).correlationId("c" + i).build(),
                    utf8("req" + i));
        }
        three.await(10, TimeUnit.SECONDS);
        close(conn);
        close(server);
        Map<String, Object> obs = map("replies", new TreeMap<>(replies));
        if (direct) {
            boolean all = !seen.isEmpty();
            for (String s : seen) all &= s.startsWith("amq.rabbitmq.reply-to.");
            obs.put("server_saw_prefix", all ? "amq.rabbitmq.reply-to." : new ArrayList<>(seen));
        } else {
            obs.put("reply_queue", namedBy(replyTo));
        }
        return obs;
    }

    Object large_message() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String q = name("large");
        ch.queueDeclare(q, false, true, false, null);
        byte[] body = new byte[LARGE_SIZE];
        for (int i = 0; i < LARGE_SIZE; i++) body[i] = (byte) (i % 251);
        ch.basicPublish("", q, null, body);
        ch.basicPublish("", q, null, new byte[0]);
        GetResponse big = waitGet(ch, q);
        GetResponse empty = waitGet(ch, q);
        ch.basicAck(empty.getEnvelope().getDeliveryTag(), true);
        MessageDigest md = MessageDigest.getInstance("SHA-256");
        StringBuilder hex = new StringBuilder();
        for (byte b : md.digest(big.getBody())) hex.append(String.format("%02x", b));
        close(conn);
        return map("size", big.getBody().length, "sha256", hex.toString(), "empty", empty.getBody().length);
    }

    Object many_channels() throws Exception {
        Connection conn = connect(url);
        String q = name("many");
        List<Channel> chans = new ArrayList<>();
        for (int i = 0; i < 200; i++) chans.add(conn.createChannel());
        chans.get(0).queueDeclare(q, false, true, false, null);
        for (int i = 0; i < chans.size(); i++) chans.get(i).basicPublish("", q, null, utf8(Integer.toString(i)));
        Object error = null;
        try {
            chans.get(5).queueDeclarePassive(name("missing"));
        } catch (IOException e) {
            error = codeOf(e);
        }
        boolean othersOk = true;
        for (int i = 0; i < chans.size(); i++) if (i != 5) othersOk &= chans.get(i).isOpen();
        chans.get(6).queueDeclarePassive(q);
        List<String> got = getAll(chans.get(7), q);
        close(conn);
        return map("opened", chans.size(), "received", got.size(), "distinct", new HashSet<>(got).size(),
                "error_code", error, "others_ok", othersOk);
    }

    Object heartbeats() throws Exception {
        Connection conn = connect(url, 2);
        int negotiated = conn.getHeartbeat();
        Thread.sleep(5000);      // the client's heartbeat thread keeps the connection alive
        Channel ch = conn.createChannel();
        ch.queueDeclare(name("hb"), false, true, false, null);
        boolean alive = conn.isOpen();
        close(conn);
        return map("negotiated", negotiated, "alive", alive);
    }

    Object consumer_killed() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String q = name("killed");
        ch.queueDeclare(q, false, false, false, null);
        try {
            for (int i = 1; i <= KILLED_MESSAGES; i++) ch.basicPublish("", q, null, utf8("m" + i));
            Map<String, Object> obs = runWorkerAndKill(q);
            long deadline = System.currentTimeMillis() + 10000;
            while (ch.queueDeclarePassive(q).getMessageCount() < 25 && System.currentTimeMillis() < deadline) {
                Thread.sleep(50);
            }
            List<Object> after = new ArrayList<>();
            for (;;) {
                GetResponse r = ch.basicGet(q, true);
                if (r == null) break;
                after.add(list(str(r.getBody()), r.getEnvelope().isRedeliver()));
            }
            obs.put("after", after);
            return obs;
        } finally {
            ch.queueDelete(q);
            close(conn);
        }
    }

    Map<String, Object> runWorkerAndKill(String q) throws Exception {
        String java = ProcessHandle.current().info().command().orElse("java");
        Process p = new ProcessBuilder(java, "-cp", System.getProperty("java.class.path"), "Scenarios",
                "worker", url, q).redirectError(ProcessBuilder.Redirect.DISCARD).start();
        ExecutorService ex = Executors.newSingleThreadExecutor();
        try {
            Future<Integer> reading = ex.submit(() -> {
                BufferedReader r = new BufferedReader(new InputStreamReader(p.getInputStream(), StandardCharsets.UTF_8));
                int received = 0;
                String line;
                while ((line = r.readLine()) != null) {
                    if (line.startsWith("got ")) received++;
                    else if (line.trim().equals("holding")) return received;
                }
                throw new IOException("worker exited after " + received + " deliveries without holding");
            });
            int received = reading.get(20, TimeUnit.SECONDS);
            return map("worker_received", received, "worker_acked", Math.min(received, WORKER_ACKS));
        } finally {
            p.destroyForcibly();       // SIGKILL on Unix
            p.waitFor(10, TimeUnit.SECONDS);
            ex.shutdownNow();
        }
    }

    Object reserved_names() throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        String q = ch.queueDeclare("", false, true, true, null).getQueue();
        Map<String, Object> obs = map("server_named", namedBy(q));
        ch.queueDeclarePassive(q);
        obs.put("passive_redeclare", "ok");
        String[][] cases = {{"redeclare", q}, {"amq_custom", "amq.custom-" + prefix}};
        for (String[] kv : cases) {
            try {
                conn.createChannel().queueDeclare(kv[1], false, true, true, null);
                obs.put(kv[0], "ok");
            } catch (IOException e) {
                obs.put(kv[0], codeOf(e));
            }
        }
        close(conn);
        return obs;
    }

    static void worker(String url, String queue) throws Exception {
        Connection conn = connect(url);
        Channel ch = conn.createChannel();
        ch.basicQos(WORKER_PREFETCH);
        int[] count = {0};
        ch.basicConsume(queue, false, new DefaultConsumer(ch) {
            @Override
            public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body) throws IOException {
                count[0]++;
                System.out.println("got " + str(body) + " " + env.isRedeliver());
                if (count[0] <= WORKER_ACKS) ch.basicAck(env.getDeliveryTag(), false);
                if (count[0] == WORKER_HOLD) System.out.println("holding");
                System.out.flush();
            }
        });
        Thread.sleep(Long.MAX_VALUE);
    }

    Object run(String scenario) throws Exception {
        switch (scenario) {
            case "connect": return connect();
            case "exchanges": return exchanges();
            case "publish_consume_ack": return publish_consume_ack();
            case "nack_requeue": return nack_requeue();
            case "dead_letter": return dead_letter();
            case "confirms": return confirms();
            case "mandatory": return mandatory();
            case "basic_get": return basic_get();
            case "rpc": return rpc(false);
            case "direct_reply_to": return rpc(true);
            case "large_message": return large_message();
            case "many_channels": return many_channels();
            case "heartbeats": return heartbeats();
            case "consumer_killed": return consumer_killed();
            case "reserved_names": return reserved_names();
            default: throw new UnsupportedOperationException("not implemented by this driver");
        }
    }

    // -- JSON output -----------------------------------------------------------------------------
    static String json(Object v) {
        StringBuilder sb = new StringBuilder();
        write(sb, v);
        return sb.toString();
    }

    static void write(StringBuilder sb, Object v) {
        if (v == null) sb.append("null");
        else if (v instanceof Boolean || v instanceof Integer || v instanceof Long || v instanceof Short
                || v instanceof Byte) sb.append(v);
        else if (v instanceof Number) sb.append(((Number) v).doubleValue());
        else if (v instanceof Map) {
            sb.append('{');
            boolean first = true;
            for (Map.Entry<?, ?> e : ((Map<?, ?>) v).entrySet()) {
                if (!first) sb.append(',');
                first = false;
                write(sb, e.getKey().toString());
                sb.append(':');
                write(sb, e.getValue());
            }
            sb.append('}');
        } else if (v instanceof List) {
            sb.append('[');
            boolean first = true;
            for (Object x : (List<?>) v) {
                if (!first) sb.append(',');
                first = false;
                write(sb, x);
            }
            sb.append(']');
        } else if (v instanceof Date) write(sb, Long.valueOf(((Date) v).getTime() / 1000));
        else {
            String s = v.toString();
            sb.append('"');
            for (char c : s.toCharArray()) {
                if (c == '"' || c == '\\') sb.append('\\').append(c);
                else if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
                else sb.append(c);
            }
            sb.append('"');
        }
    }

    static synchronized void emit(Map<String, Object> m) {
        System.out.println(json(m));
        System.out.flush();
    }

    public static void main(String[] args) throws Exception {
        if (args.length >= 3 && args[0].equals("worker")) {
            worker(args[1], args[2]);
            return;
        }
        if (args.length < 3 || !args[0].equals("run")) {
            System.err.println("usage: run URL PREFIX SCENARIO... | worker URL QUEUE");
            System.exit(2);
        }
        Scenarios s = new Scenarios(args[1], args[2]);
        ExecutorService ex = Executors.newCachedThreadPool(r -> {
            Thread t = new Thread(r);
            t.setDaemon(true);
            return t;
        });
        for (int i = 3; i < args.length; i++) {
            String name = args[i];
            emit(map("start", name));
            Future<Object> f = ex.submit(() -> s.run(name));
            try {
                emit(map("scenario", name, "obs", f.get(SCENARIO_TIMEOUT_S, TimeUnit.SECONDS)));
            } catch (Exception e) {
                f.cancel(true);
                Throwable t = e instanceof java.util.concurrent.ExecutionException ? e.getCause() : e;
                java.io.StringWriter w = new java.io.StringWriter();
                t.printStackTrace(new java.io.PrintWriter(w));
                String trace = w.toString();
                emit(map("scenario", name, "error", t.getClass().getSimpleName() + ": " + t.getMessage(),
                        "trace", trace.substring(Math.max(0, trace.length() - 3000))));
            }
        }
        System.exit(0);
    }
}
