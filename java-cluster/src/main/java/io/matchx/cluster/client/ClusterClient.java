package io.matchx.cluster.client;

import io.aeron.Aeron;
import io.aeron.Publication;
import io.aeron.cluster.client.AeronCluster;
import io.aeron.cluster.client.EgressListener;
import io.aeron.cluster.codecs.EventCode;
import io.aeron.driver.MediaDriver;
import io.aeron.driver.ThreadingMode;
import io.aeron.logbuffer.Header;
import io.matchx.cluster.DelegatingIdleStrategy;
import io.matchx.cluster.LatencyTrace;
import io.matchx.cluster.SetupRepeat;
import org.agrona.CloseHelper;
import org.agrona.DirectBuffer;
import org.agrona.concurrent.Agent;
import org.agrona.concurrent.AgentInvoker;
import org.agrona.concurrent.BackoffIdleStrategy;
import org.agrona.concurrent.IdleStrategy;
import org.agrona.concurrent.UnsafeBuffer;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;
import java.util.concurrent.locks.ReentrantLock;

/**
 * Client glue for Python: an embedded media driver, one {@link AeronCluster} session and a Java
 * thread that polls egress, sends keep-alives and reconnects when the session is closed.
 *
 * <p>Python never receives a callback (a Java-to-Python crossing waits for the GIL); it calls
 * {@link #poll(long)}, which blocks in Java with the GIL released and returns every pending event
 * as one framed byte array: {@code uint8 kind, int32 length, bytes} repeated, little-endian.
 *
 * <p>With {@code invokeDriver} the embedded media driver has no thread of its own (Aeron's INVOKER
 * mode): whichever thread polls egress runs its duty cycle first, and an offer runs it at once, so
 * the command leaves on the offering thread. With {@link #receive(long)} instead of {@link #poll}
 * the caller's thread polls egress itself and takes what it finds without a hand-over from the
 * poller thread, which then only keeps the session alive (keep-alives, reconnects, probes) and
 * polls when no caller has for a while. Together they take an answer from the socket to Python on
 * one thread instead of three (driver, poller, receiver), each of which parked and woke per answer.
 */
public final class ClusterClient implements AutoCloseable
{
    public static final byte EVENT_MESSAGE = 1;
    public static final byte EVENT_CONNECTED = 2;
    public static final byte EVENT_NEW_LEADER = 3;
    public static final byte EVENT_DISCONNECTED = 4;
    public static final byte EVENT_CONNECT_FAILED = 5;
    public static final byte EVENT_SESSION_EVENT = 6;

    /** Returned by {@link #offer(byte[])} when no session is up; the caller keeps the request pending. */
    public static final long NOT_CONNECTED = -100;

    /** The poller polls egress itself once no {@link #receive} loop has for this long (the loop's longest park is 0.5 ms). */
    static final long RECEIVER_AWAY_NS = TimeUnit.MILLISECONDS.toNanos(2);
    /**
     * The poller's park while a {@link #receive} loop polls: it only keeps the session alive then
     * (keep-alives every second, a reconnect or probe at most this late).
     */
    static final long KEEPER_PARK_NS = TimeUnit.MILLISECONDS.toNanos(4);

    private final MediaDriver driver;
    private final Aeron aeron;
    private final String egressChannel;
    private final long connectTimeoutMs;
    private final long newLeaderTimeoutMs;
    private final ReentrantLock lock = new ReentrantLock();
    private final LinkedBlockingQueue<byte[]> events = new LinkedBlockingQueue<>();
    // direct(): while a caller waits for its own answer on its own thread, everything polled
    // goes here instead of to events (switched under lock, which every egress poll holds)
    private final LinkedBlockingQueue<byte[]> directEvents = new LinkedBlockingQueue<>();
    private volatile boolean direct;
    // awaitDirect's looks at egress: written only by the one direct caller at a time
    private volatile long directLooks;
    // a direct caller past its first wait: the embedded driver wakes it when it has done work
    // (received its answer, most likely) instead of leaving it to the end of its park
    private volatile Thread directWaiter;
    // wakeDriver(true): an offer wakes the embedded driver's thread (learnt from its idle strategy)
    private volatile Thread driverThread;
    private volatile boolean wakeDriver;
    private final Thread poller;
    // null: the driver runs on its own thread (ThreadingMode.SHARED)
    private final AgentInvoker driverInvoker;
    // the Aeron client's conductor, on an invoker when the driver is (safe from any thread: it
    // runs only when it gets the client's lock, tryLock)
    private final AgentInvoker conductorInvoker;
    // one thread at a time runs the driver's duty cycle; held only for the cycle, never across a park
    private final ReentrantLock driverLock = new ReentrantLock();
    private boolean driverClosed; // under driverLock
    // when a receive() loop last polled egress: the poller stands back while one does
    // a receive() loop's park while a sync caller waits for its answer on its own thread
    private static final long DIRECT_STANDBY_NS = TimeUnit.MICROSECONDS.toNanos(500);
    private volatile long receiverCycleNs = System.nanoTime() - RECEIVER_AWAY_NS;
    // egress messages polled, and those the poller thread polled (so handed over to the receiver),
    // for the tests; written under lock
    private volatile long egressMessages;
    private volatile long keeperMessages;
    private final UnsafeBuffer offerBuffer = new UnsafeBuffer(ByteBuffer.allocateDirect(1 << 20));

    private volatile String ingressEndpoints;
    private volatile byte[] credentials;
    private volatile boolean running = true;
    private volatile AeronCluster cluster;
    private volatile int leaderMemberId = -1;
    private volatile String rejectionReason;
    // probe(): a second session being opened beside the current one. The flags are set by other
    // threads (or the listener) and acted on by the poller thread, which alone owns the probe.
    private volatile boolean probeWanted;
    private volatile boolean probeDropped;
    private volatile boolean probeAbandoned;
    /** No reconnect until new credentials: the cluster refused these for good (e.g. revoked). */
    private volatile boolean reconnectHeld;
    private AeronCluster.AsyncConnect probe;
    private AeronCluster.Context probeCtx;
    private boolean probeKept; // false: close the session it opens instead of using it

    public ClusterClient(
        final String ingressEndpoints,
        final String aeronDir,
        final String egressHost,
        final long connectTimeoutMs,
        final long newLeaderTimeoutMs,
        final byte[] credentials,
        final boolean invokeDriver)
    {
        this.ingressEndpoints = ingressEndpoints;
        this.egressChannel = "aeron:udp?endpoint=" + egressHost + ":0";
        this.connectTimeoutMs = connectTimeoutMs;
        this.newLeaderTimeoutMs = newLeaderTimeoutMs;
        this.credentials = null == credentials ? new byte[0] : credentials;

        // after a failover the client opens a new ingress publication to the new leader: if its
        // first SETUP is missed, the next one comes after this interval, not Aeron's 100 ms
        // (Aeron's 100 ms idle heartbeat stays: a shorter one would cost every idle client's leader)
        SetupRepeat.applySetupOnly(SetupRepeat.DEFAULT_MS);
        final MediaDriver.Context driverCtx = new MediaDriver.Context()
            .aeronDirectoryName(aeronDir)
            .dirDeleteOnStart(true)
            .dirDeleteOnShutdown(true)
            .termBufferSparseFile(true)
            .publicationTermBufferLength(1 << 20)
            .ipcTermBufferLength(64 * 1024);
        if (invokeDriver)
        {
            // no executor thread either (it polled its queue every 1 ms): the driver resolves a new
            // publication's endpoint inline, which only a connect asks for
            driverCtx.threadingMode(ThreadingMode.INVOKER).asyncExecutorEnabled(false);
        }
        else
        {
            driverCtx.threadingMode(ThreadingMode.SHARED)
                .sharedIdleStrategy(learningThread(new BackoffIdleStrategy(10, 10, 1_000, 500_000)));
        }
        driver = MediaDriver.launchEmbedded(driverCtx);
        driverInvoker = invokeDriver ? driver.sharedAgentInvoker() : null;
        final Aeron.Context aeronCtx = new Aeron.Context().aeronDirectoryName(driver.aeronDirectoryName());
        if (invokeDriver)
        {
            // the Aeron client runs the driver while it awaits the driver's answer (adding a
            // publication, say) on whatever thread asked, under the same lock as everyone else
            final AgentInvoker locked = new AgentInvoker(driverCtx.errorHandler(), null, new Agent()
            {
                public int doWork()
                {
                    return invokeDriver();
                }

                public String roleName()
                {
                    return "client-driver";
                }
            });
            locked.start();
            // Aeron requires its client conductor on an invoker too then: the same threads run it
            aeronCtx.driverAgentInvoker(locked).useConductorAgentInvoker(true);
        }
        try
        {
            aeron = Aeron.connect(aeronCtx);
        }
        catch (final RuntimeException ex)
        {
            CloseHelper.quietClose(driver); // its directory in /dev/shm goes with it
            throw ex;
        }
        conductorInvoker = invokeDriver ? aeron.conductorAgentInvoker() : null;
        poller = new Thread(this::run, "matchx-client-poller");
        poller.setDaemon(true);
        poller.start();
    }

    /**
     * With {@code true}, each successful {@link #offer} wakes the embedded media driver, which
     * sends the message at once instead of at the end of its park (up to 500 us between one
     * command and the next). Costs the offering thread one unpark; nothing when idle.
     */
    public void wakeDriver(final boolean wake)
    {
        wakeDriver = wake;
    }

    private IdleStrategy learningThread(final IdleStrategy inner)
    {
        return new DelegatingIdleStrategy(inner)
        {
            public void idle(final int workCount)
            {
                if (null == driverThread)
                {
                    driverThread = Thread.currentThread();
                }
                if (workCount > 0)
                {
                    final Thread waiter = directWaiter;
                    if (null != waiter)
                    {
                        LockSupport.unpark(waiter);
                    }
                }
                inner.idle(workCount);
            }
        };
    }

    /** New credentials (a refreshed token) are used by the next connect. */
    public void credentials(final byte[] credentials)
    {
        this.credentials = null == credentials ? new byte[0] : credentials;
        reconnectHeld = false;
    }

    /**
     * Stops connecting until {@link #credentials} or {@link #reconnect} is called: the caller was
     * told its credentials are refused for good (revoked, bad signature, ...). Retrying them once a
     * second would cost the cluster a session and its log buffers per attempt, forever.
     */
    public void holdReconnect()
    {
        reconnectHeld = true;
    }

    public boolean isReconnectHeld()
    {
        return reconnectHeld;
    }

    /** Drops the current session so the poller connects again, e.g. with new credentials. */
    public void reconnect()
    {
        reconnectHeld = false;
        probeWanted = false;
        probeAbandoned = true; // a probe sent with the old credentials is not the new session
        lock.lock();
        try
        {
            final AeronCluster current = cluster;
            cluster = null;
            CloseHelper.quietClose(current);
        }
        finally
        {
            lock.unlock();
        }
    }

    /**
     * Opens a second session through every member while the current one stays open, for a session
     * that has heard nothing for a while: its leader may be dead with the NewLeader event lost, or
     * the cluster may still be electing, and only the second case ends with a NewLeader event on
     * this session. Whichever comes first is kept: the new session connecting (it replaces the
     * current one, {@link #EVENT_CONNECTED}) or a NewLeader event on the current session (the
     * probe is dropped; if its connect request is already out, the session it opens is closed
     * rather than left to the cluster's session timeout). If the current session closes first,
     * the probe is its reconnect. A probe that fails is reported as {@link #EVENT_CONNECT_FAILED}
     * and not retried: the caller asks again; one at a time. Replacing the session outright
     * instead ({@link #reconnect}) threw away the NewLeader event of an election that outlasted
     * the caller's patience, and the new session's connect, sent while no member led, could then
     * wait out its whole connect timeout.
     */
    public void probe()
    {
        if (reconnectHeld)
        {
            return;
        }
        probeWanted = true;
    }

    public void ingressEndpoints(final String ingressEndpoints)
    {
        this.ingressEndpoints = ingressEndpoints;
    }

    public boolean isConnected()
    {
        final AeronCluster current = cluster;
        return null != current && !current.isClosed();
    }

    public int leaderMemberId()
    {
        return leaderMemberId;
    }

    /**
     * @return a positive position on success, {@link #NOT_CONNECTED}, or a negative
     * {@link Publication} code (back pressure etc.); the caller decides whether to retry.
     */
    public long offer(final byte[] message)
    {
        if (message.length > offerBuffer.capacity())
        {
            throw new IllegalArgumentException("message of " + message.length + " bytes exceeds " + offerBuffer.capacity());
        }
        final long result;
        lock.lock();
        try
        {
            final AeronCluster current = cluster;
            if (null == current || current.isClosed())
            {
                return NOT_CONNECTED;
            }
            offerBuffer.putBytes(0, message);
            result = current.offer(offerBuffer, 0, message.length);
            LatencyTrace.mark(LatencyTrace.CLIENT_OFFERED);
            if (result > 0 && wakeDriver && null == driverInvoker)
            {
                final Thread thread = driverThread;
                if (null != thread)
                {
                    LockSupport.unpark(thread);
                }
            }
        }
        finally
        {
            lock.unlock();
        }
        if (result > 0 || result == Publication.BACK_PRESSURED)
        {
            // the driver sends it now, on this thread (back pressure: its cycle may free the window)
            invokeDriver();
        }
        return result;
    }

    /**
     * One duty cycle of the embedded driver when it has no thread of its own; 0 otherwise (or once
     * closed). Blocks while another thread runs one: a cycle is microseconds.
     */
    private int invokeDriver()
    {
        if (null == driverInvoker)
        {
            return 0;
        }
        driverLock.lock();
        try
        {
            return driverClosed ? 0 : driverInvoker.invoke();
        }
        finally
        {
            driverLock.unlock();
        }
    }

    /**
     * The driver's and the Aeron client conductor's duty cycles when they have no threads: before
     * each look at egress (an image appears, a keep-alive to the driver goes out, a reply is read
     * off the socket).
     */
    private int invokeAgents()
    {
        if (null == driverInvoker)
        {
            return 0;
        }
        return invokeDriver() + conductorInvoker.invoke();
    }

    /** Whether the embedded driver runs on the threads that poll and offer (no thread of its own). */
    public boolean driverInvoked()
    {
        return null != driverInvoker;
    }

    /** Egress messages polled, by any thread. */
    public long egressMessages()
    {
        return egressMessages;
    }

    /** Egress messages the poller thread polled and handed to the receiver (not taken by a {@link #receive} loop itself). */
    public long keeperMessages()
    {
        return keeperMessages;
    }

    /**
     * Waits up to {@code timeoutMs} for at least one event, then returns all pending ones framed,
     * or null when none arrived.
     */
    public byte[] poll(final long timeoutMs) throws InterruptedException
    {
        if (!direct)
        {
            // an event emitted outside the lock just as a direct wait ended (a connect's, say)
            final byte[] stray = directEvents.poll();
            if (null != stray)
            {
                return withRest(stray, directEvents);
            }
        }
        final byte[] first = events.poll(timeoutMs, TimeUnit.MILLISECONDS);
        return null == first ? null : withRest(first, events);
    }

    /**
     * As {@link #poll}, but the calling thread polls egress itself (running the embedded driver
     * first when it has no thread) until an event is there or {@code timeoutMs} has passed, backing
     * off as the poller does: an answer reaches the caller without the poller's hand-over (a
     * queue, a park and a wake-up per answer). What the poller thread polled meanwhile (while the
     * caller was away, or a connect's events) is returned first.
     */
    public byte[] receive(final long timeoutMs)
    {
        final byte[] queued = takeQueued();
        if (null != queued)
        {
            return queued;
        }
        final long deadlineNs = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        final IdleStrategy idle = receiveIdle;
        idle.reset();
        while (running)
        {
            receiverCycleNs = System.nanoTime();
            if (direct)
            {
                // a sync caller polls for its own answer (awaitDirect): a second thread polling
                // beside it would only take the answer from it, and spend CPU its round trip needs
                LockSupport.parkNanos(DIRECT_STANDBY_NS);
                final byte[] before = takeQueued(); // emitted before the caller began
                if (null != before || System.nanoTime() - deadlineNs >= 0)
                {
                    return before;
                }
                idle.reset();
                continue;
            }
            int work = invokeAgents();
            if (lock.tryLock())
            {
                try
                {
                    final AeronCluster current = cluster;
                    if (null != current && !current.isClosed())
                    {
                        work += current.pollEgress();
                    }
                }
                catch (final RuntimeException ex)
                {
                    // the poller finds the session closed and reconnects
                    emit(EVENT_SESSION_EVENT, "ERROR " + ex);
                }
                finally
                {
                    lock.unlock();
                }
            }
            final byte[] found = takeQueued();
            if (null != found)
            {
                return found;
            }
            if (System.nanoTime() - deadlineNs >= 0)
            {
                return null;
            }
            idle.idle(work);
        }
        return null;
    }

    private final IdleStrategy receiveIdle = new BackoffIdleStrategy(10, 10, 1_000, 500_000);

    /** What is queued for {@link #poll}, without waiting. */
    private byte[] takeQueued()
    {
        if (!direct)
        {
            final byte[] stray = directEvents.poll();
            if (null != stray)
            {
                return withRest(stray, directEvents);
            }
        }
        final byte[] first = events.poll();
        return null == first ? null : withRest(first, events);
    }

    /**
     * The caller's own answer, waited for on the caller's thread (MatchClient's sync request):
     * from now until {@link #endDirect}, every event polled (by {@link #awaitDirect} or by the
     * poller thread) goes to the direct queue, which only {@link #awaitDirect} reads, instead of
     * the queue {@link #poll} reads. One direct caller at a time (the Python side ensures it).
     */
    public void beginDirect()
    {
        lock.lock();
        try
        {
            direct = true;
        }
        finally
        {
            lock.unlock();
        }
    }

    /**
     * Polls egress on the calling thread (backing off up to {@code maxParkUs} between empty
     * polls) until at least one event is in the direct queue, then returns them all framed as
     * {@link #poll} does; null after {@code timeoutMs} without one. It saves the two thread
     * hand-overs of the poller path (poller thread, then {@link #poll}'s reader): the answer is
     * taken by the thread that waits for it. The poller thread goes on as before (keep-alives,
     * reconnects; when it polls first, the answer still lands in the direct queue).
     *
     * <p>With {@code firstWaitUs > 0} the caller first sleeps that long without polling (an
     * event the poller thread brings meanwhile ends the sleep at once): an answer takes at
     * least a round trip through the cluster, and each empty poll before then cost CPU on the
     * cores the members need for that round trip (an empty poll also wakes the embedded driver;
     * a 1 ms wait cost ~0.4 ms of CPU). After it the caller polls at once and then parks,
     * without spins or yields: by then the answer is due, but not within nanoseconds; and the
     * embedded driver unparks the caller whenever it has done work (the answer received, most
     * likely), so a park no longer delays the answer by its remainder.
     */
    public byte[] awaitDirect(final long timeoutMs, final long maxParkUs, final long firstWaitUs)
        throws InterruptedException
    {
        final long startNs = System.nanoTime();
        final long deadlineNs = startNs + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        final long maxParkNs = TimeUnit.MICROSECONDS.toNanos(maxParkUs);
        final IdleStrategy idle;
        if (firstWaitUs > 0)
        {
            final long waitNs = Math.min(TimeUnit.MICROSECONDS.toNanos(firstWaitUs), deadlineNs - startNs);
            final byte[] first = directEvents.poll(Math.max(0, waitNs), TimeUnit.NANOSECONDS);
            if (null != first)
            {
                return withRest(first, directEvents);
            }
            idle = new BackoffIdleStrategy(0, 0, 1_000, maxParkNs);
            // not during the first wait: the driver's work then (sending this very request) would
            // only wake the caller early for nothing
            directWaiter = Thread.currentThread();
        }
        else
        {
            idle = new BackoffIdleStrategy(10, 10, 1_000, maxParkNs);
        }
        try
        {
            return lookForAnswer(deadlineNs, idle);
        }
        finally
        {
            directWaiter = null;
        }
    }

    private byte[] lookForAnswer(final long deadlineNs, final IdleStrategy idle)
    {
        while (true)
        {
            final byte[] first = directEvents.poll();
            if (null != first)
            {
                return withRest(first, directEvents);
            }
            if (System.nanoTime() - deadlineNs >= 0 || !running)
            {
                return null;
            }
            int work = invokeAgents();
            directLooks++;
            if (lock.tryLock())
            {
                try
                {
                    final AeronCluster current = cluster;
                    if (null != current && !current.isClosed())
                    {
                        work = current.pollEgress();
                    }
                }
                catch (final RuntimeException ex)
                {
                    // the poller thread finds the session closed and reconnects; the caller's
                    // command stays pending and is resent then
                    emit(EVENT_SESSION_EVENT, "ERROR " + ex);
                }
                finally
                {
                    lock.unlock();
                }
            }
            if (0 == work && wakeDriver && null == driverInvoker)
            {
                // the answer comes through the embedded driver: while one is awaited, the driver
                // looks for it at the caller's pace (<= maxParkUs), not at the end of its own
                // park (up to 500 us after an idle spell)
                final Thread thread = driverThread;
                if (null != thread)
                {
                    LockSupport.unpark(thread);
                }
            }
            idle.idle(work);
        }
    }

    /**
     * How many times a direct caller has looked for its answer on egress ({@link #awaitDirect}'s
     * polls, with or without a session), since this client started.
     */
    public long directLooks()
    {
        return directLooks;
    }

    /** Ends {@link #beginDirect}: later events go to {@link #poll} again; returns what was left in the direct queue (framed) or null. */
    public byte[] endDirect()
    {
        lock.lock();
        try
        {
            direct = false;
        }
        finally
        {
            lock.unlock();
        }
        final byte[] first = directEvents.poll();
        return null == first ? null : withRest(first, directEvents);
    }

    private static byte[] withRest(final byte[] first, final LinkedBlockingQueue<byte[]> queue)
    {
        final List<byte[]> batch = new ArrayList<>();
        batch.add(first);
        queue.drainTo(batch, 4096);
        if (batch.size() == 1)
        {
            return first;
        }
        int total = 0;
        for (final byte[] b : batch)
        {
            total += b.length;
        }
        final byte[] out = new byte[total];
        int offset = 0;
        for (final byte[] b : batch)
        {
            System.arraycopy(b, 0, out, offset, b.length);
            offset += b.length;
        }
        return out;
    }

    private void emit(final byte kind, final byte[] body)
    {
        final byte[] framed = new byte[5 + body.length];
        final ByteBuffer bb = ByteBuffer.wrap(framed).order(ByteOrder.LITTLE_ENDIAN);
        bb.put(kind).putInt(body.length).put(body);
        (direct ? directEvents : events).add(framed);
    }

    private void emit(final byte kind, final String text)
    {
        emit(kind, text.getBytes(StandardCharsets.UTF_8));
    }

    private final EgressListener listener = new EgressListener()
    {
        public void onMessage(
            final long clusterSessionId,
            final long timestamp,
            final DirectBuffer buffer,
            final int offset,
            final int length,
            final Header header)
        {
            LatencyTrace.mark(LatencyTrace.CLIENT_EGRESS);
            egressMessages++; // only under lock: one writer at a time
            if (Thread.currentThread() == poller)
            {
                keeperMessages++;
            }
            final byte[] framed = new byte[5 + length];
            final UnsafeBuffer out = new UnsafeBuffer(framed);
            out.putByte(0, EVENT_MESSAGE);
            out.putInt(1, length, ByteOrder.LITTLE_ENDIAN);
            buffer.getBytes(offset, framed, 5, length);
            (direct ? directEvents : events).add(framed);
        }

        public void onSessionEvent(
            final long correlationId,
            final long clusterSessionId,
            final long leadershipTermId,
            final int leaderMemberId,
            final EventCode code,
            final String detail)
        {
            emit(EVENT_SESSION_EVENT, code.name() + " " + detail);
        }

        public void onNewLeader(
            final long clusterSessionId,
            final long leadershipTermId,
            final int leaderMemberId,
            final String ingressEndpoints)
        {
            ClusterClient.this.leaderMemberId = leaderMemberId;
            // the current session has a leader again: no second session needed
            probeWanted = false;
            probeDropped = true;
            emit(EVENT_NEW_LEADER, leaderMemberId + " " + ingressEndpoints);
        }

        public void onAdminResponse(
            final long clusterSessionId,
            final long correlationId,
            final io.aeron.cluster.codecs.AdminRequestType requestType,
            final io.aeron.cluster.codecs.AdminResponseCode responseCode,
            final String message,
            final DirectBuffer payload,
            final int payloadOffset,
            final int payloadLength)
        {
            emit(EVENT_SESSION_EVENT, "ADMIN_" + responseCode.name() + " " + message);
        }
    };

    private void run()
    {
        final IdleStrategy idle = new BackoffIdleStrategy(10, 10, 1_000, 500_000);
        long nextKeepAliveMs = 0;
        long retryDelayMs = 50;
        while (running)
        {
            AeronCluster current = cluster;
            if (null == current || current.isClosed())
            {
                if (null != current)
                {
                    lock.lock();
                    try
                    {
                        cluster = null;
                        CloseHelper.quietClose(current);
                    }
                    finally
                    {
                        lock.unlock();
                    }
                    emit(EVENT_DISCONNECTED, "session closed");
                }
                if (probeAbandoned)
                {
                    probeAbandoned = false;
                    closeProbe();
                }
                probeWanted = false; // a reconnect is what a probe would do
                probeDropped = false;
                if (null != probe)
                {
                    // the probe under way is this reconnect: no second connect beside it
                    probeKept = true;
                    idle.idle(invokeAgents() + pollProbe());
                    continue;
                }
                if (reconnectHeld)
                {
                    sleep(50);
                    retryDelayMs = 50;
                    continue;
                }
                current = connect();
                if (null == current)
                {
                    sleep(retryDelayMs);
                    retryDelayMs = Math.min(retryDelayMs * 2, 1_000);
                    continue;
                }
                retryDelayMs = 50;
            }

            // a receive() loop polls egress (and runs the driver): keep the session alive only
            final boolean receiverPolls = System.nanoTime() - receiverCycleNs < RECEIVER_AWAY_NS;
            int work = receiverPolls ? 0 : invokeAgents();
            lock.lock();
            try
            {
                if (!current.isClosed())
                {
                    if (!receiverPolls)
                    {
                        work += current.pollEgress();
                    }
                    final long nowMs = System.currentTimeMillis();
                    if (nowMs >= nextKeepAliveMs)
                    {
                        current.sendKeepAlive();
                        nextKeepAliveMs = nowMs + 1_000;
                    }
                }
            }
            catch (final RuntimeException ex)
            {
                emit(EVENT_SESSION_EVENT, "ERROR " + ex);
                CloseHelper.quietClose(current);
            }
            finally
            {
                lock.unlock();
            }
            work += serviceProbe();
            if (receiverPolls && 0 == work && null == probe)
            {
                idle.reset();
                LockSupport.parkNanos(KEEPER_PARK_NS);
            }
            else
            {
                idle.idle(work);
            }
        }
        closeProbe();
    }

    /** The probe's part of the poller's duty cycle, beside a live session. */
    private int serviceProbe()
    {
        if (probeAbandoned)
        {
            probeAbandoned = false;
            closeProbe();
        }
        if (probeDropped)
        {
            probeDropped = false;
            if (null != probe)
            {
                if (probe.state().ordinal() < AeronCluster.AsyncConnect.State.POLL_RESPONSE.ordinal())
                {
                    closeProbe(); // nothing sent to the cluster yet
                }
                else
                {
                    probeKept = false; // let it finish, then close the session it opened
                }
            }
        }
        if (probeWanted)
        {
            probeWanted = false;
            if (null == probe)
            {
                startProbe();
            }
            else
            {
                probeKept = true;
            }
        }
        return null == probe ? 0 : pollProbe();
    }

    private void startProbe()
    {
        final AeronCluster.Context ctx = newContext();
        rejectionReason = null;
        try
        {
            probe = AeronCluster.asyncConnect(ctx);
            probeCtx = ctx;
            probeKept = true;
        }
        catch (final RuntimeException ex)
        {
            emit(EVENT_CONNECT_FAILED, ex.getClass().getSimpleName() + ": " + ex.getMessage());
        }
    }

    /** Advances the probe; when it has connected, it becomes the session (or is closed if dropped). */
    private int pollProbe()
    {
        final AeronCluster connected;
        try
        {
            connected = probe.poll();
        }
        catch (final RuntimeException ex)
        {
            final boolean report = probeKept;
            closeProbe();
            if (report)
            {
                final String reason = rejectionReason;
                emit(EVENT_CONNECT_FAILED, ex.getClass().getSimpleName() + ": " +
                    (null != reason && reason.startsWith("rejected:") ? reason.substring("rejected:".length()) :
                    ex.getMessage()));
            }
            return 1;
        }
        if (null == connected)
        {
            return 0;
        }
        probe = null;
        probeCtx = null;
        if (!probeKept)
        {
            CloseHelper.quietClose(connected); // closes its session in the cluster too
            return 1;
        }
        final AeronCluster old;
        lock.lock();
        try
        {
            old = cluster;
            cluster = connected;
        }
        finally
        {
            lock.unlock();
        }
        CloseHelper.quietClose(old);
        leaderMemberId = connected.leaderMemberId();
        emit(EVENT_CONNECTED, connected.leaderMemberId() + " " + connected.clusterSessionId());
        return 1;
    }

    private void closeProbe()
    {
        if (null != probe)
        {
            CloseHelper.quietClose(probe);
            probe = null;
        }
        if (null != probeCtx)
        {
            CloseHelper.quietClose(probeCtx::close);
            probeCtx = null;
        }
    }

    private AeronCluster connect()
    {
        final AeronCluster.Context ctx = newContext();
        rejectionReason = null;
        try
        {
            final AeronCluster connected = AeronCluster.connect(ctx);
            lock.lock();
            try
            {
                cluster = connected;
            }
            finally
            {
                lock.unlock();
            }
            leaderMemberId = connected.leaderMemberId();
            emit(EVENT_CONNECTED, connected.leaderMemberId() + " " + connected.clusterSessionId());
            return connected;
        }
        catch (final RuntimeException ex)
        {
            ctx.close();
            final String kind = ex.getClass().getSimpleName();
            final String reason = rejectionReason;
            emit(EVENT_CONNECT_FAILED, kind + ": " + (null != reason && reason.startsWith("rejected:") ?
                reason.substring("rejected:".length()) : ex.getMessage()));
            return null;
        }
    }

    private AeronCluster.Context newContext()
    {
        return new AeronCluster.Context()
            .aeron(aeron)
            .ownsAeronClient(false)
            .ingressEndpoints(ingressEndpoints)
            .ingressChannel("aeron:udp?term-length=1m")
            .egressChannel(egressChannel)
            .messageTimeoutNs(TimeUnit.MILLISECONDS.toNanos(connectTimeoutMs))
            .newLeaderTimeoutNs(TimeUnit.MILLISECONDS.toNanos(newLeaderTimeoutMs))
            .idleStrategy(drivingIdle(new BackoffIdleStrategy(10, 10, 1_000, 500_000)))
            .credentialsSupplier(new io.aeron.security.CredentialsSupplier()
            {
                public byte[] encodedCredentials()
                {
                    return credentials;
                }

                public byte[] onChallenge(final byte[] encodedChallenge)
                {
                    // The cluster's TokenAuthenticator sends "rejected:<reason>" before it
                    // rejects a session, because Aeron's rejection itself carries no reason.
                    rejectionReason = new String(encodedChallenge, StandardCharsets.UTF_8);
                    return new byte[0];
                }
            })
            .egressListener(listener);
    }

    /**
     * A connect's wait (Aeron's own loop, on the poller thread) runs the driver between its looks
     * when the driver has no thread: nobody else may be running it then.
     */
    private IdleStrategy drivingIdle(final IdleStrategy inner)
    {
        if (null == driverInvoker)
        {
            return inner;
        }
        return new DelegatingIdleStrategy(inner)
        {
            public void idle(final int workCount)
            {
                inner.idle(workCount + invokeAgents());
            }

            public void idle()
            {
                if (0 == invokeAgents())
                {
                    inner.idle();
                }
            }
        };
    }

    private static void sleep(final long ms)
    {
        try
        {
            Thread.sleep(ms);
        }
        catch (final InterruptedException ex)
        {
            Thread.currentThread().interrupt();
        }
    }

    public void close()
    {
        running = false;
        try
        {
            poller.join(5_000);
        }
        catch (final InterruptedException ex)
        {
            Thread.currentThread().interrupt();
        }
        lock.lock();
        try
        {
            CloseHelper.quietClose(cluster);
            cluster = null;
        }
        finally
        {
            lock.unlock();
        }
        try
        {
            CloseHelper.close(aeron);
        }
        finally
        {
            driverLock.lock();
            try
            {
                // a receive() loop may still be running: it finds the driver closed, not half closed
                driverClosed = true;
            }
            finally
            {
                driverLock.unlock();
            }
            CloseHelper.close(driver);
        }
    }
}
