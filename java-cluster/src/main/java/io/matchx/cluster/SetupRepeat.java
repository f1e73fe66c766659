package io.matchx.cluster;

import io.aeron.driver.Configuration;
import org.agrona.UnsafeApi;

import java.lang.reflect.Field;
import java.util.concurrent.TimeUnit;

/**
 * How often a media driver repeats a new publication's SETUP frame until a receiver answers.
 *
 * <p>Why this exists: in a failover the new leader creates its log publication, and its first SETUP
 * goes out before the surviving follower subscribes (the follower learns of the new term from a
 * message the leader sends after creating the publication). The follower can join the log only
 * on the next SETUP, which Aeron 1.51 repeats every 100 ms ({@code
 * Configuration.PUBLICATION_SETUP_TIMEOUT_NS}) with no setting to change it: ~100 ms of every
 * failover (docs/performance.md, "Failover under load"). A receiver's request for a SETUP does not
 * help, the driver still waits out the interval.
 *
 * <p>The constant is read at run time ({@code getstatic}; javac does not inline it, its initialiser
 * is a method call), so writing it before any driver runs changes the interval for the whole JVM.
 * A publication repeats SETUP only until its first receiver connects (later only when a receiver
 * asks), so a shorter interval costs a few 40-byte packets per publication that has no receiver.
 * If the field is gone or cannot be written (another Aeron version), Aeron's interval stays and
 * {@link #apply} says so.
 *
 * <p>{@link #apply} also sets how long an idle publication waits before its next heartbeat
 * ({@code Configuration.PUBLICATION_HEARTBEAT_TIMEOUT_NS}, Aeron's fixed 100 ms, read the same way)
 * to {@link #HEARTBEAT_MS}: a closed publication's end of stream travels only on that heartbeat, so
 * a leader that ends its log for a handover ({@link Handover}) was seen to end it ~100 ms after its
 * last log entry, and its followers could elect only then. Costs idle heartbeats: one per idle
 * network publication every {@link #HEARTBEAT_MS} instead of every 100 ms (a member has a few, plus
 * two per idle client session). Clients keep Aeron's heartbeat ({@link #applySetupOnly}).
 */
public final class SetupRepeat
{
    static final String FIELD = "PUBLICATION_SETUP_TIMEOUT_NS";
    static final String HEARTBEAT_FIELD = "PUBLICATION_HEARTBEAT_TIMEOUT_NS";
    public static final long DEFAULT_MS = 10;
    /** An idle publication's heartbeat interval in a member's driver: its end of stream goes out this soon. */
    public static final long HEARTBEAT_MS = 10;
    static final long MAX_MS = 1_000;

    private SetupRepeat()
    {
    }

    /**
     * Sets the interval for this JVM; call it before the first media driver starts (code the JIT
     * has already compiled may keep the old value).
     *
     * @param intervalMs 1..{@link #MAX_MS}.
     * @return the interval now in force, in ns (Aeron's own if it could not be changed).
     */
    public static synchronized long apply(final long intervalMs)
    {
        final long setupNs = applySetupOnly(intervalMs);
        write(HEARTBEAT_FIELD, TimeUnit.MILLISECONDS.toNanos(HEARTBEAT_MS), "heartbeat (end of stream) interval",
            "a handover's end of log goes out up to 100 ms later");
        return setupNs;
    }

    /** Like {@link #apply} but leaves the heartbeat interval at Aeron's (for clients). */
    public static synchronized long applySetupOnly(final long intervalMs)
    {
        if (intervalMs < 1 || intervalMs > MAX_MS)
        {
            throw new IllegalArgumentException("invalid setting: setup.repeat.ms must be in 1.." + MAX_MS);
        }
        final long wantedNs = TimeUnit.MILLISECONDS.toNanos(intervalMs);
        try
        {
            // initialise the class first: its static initialiser would otherwise run later, at the
            // driver's first use, and write Aeron's 100 ms over this value
            Class.forName(Configuration.class.getName(), true, Configuration.class.getClassLoader());
            final Field field = Configuration.class.getField(FIELD);
            final Object base = UnsafeApi.staticFieldBase(field);
            final long offset = UnsafeApi.staticFieldOffset(field);
            UnsafeApi.putLong(base, offset, wantedNs);
            return current();
        }
        catch (final ReflectiveOperationException | RuntimeException | LinkageError ex)
        {
            System.err.println("[matchx] WARN cannot set the media driver's SETUP repeat to " + intervalMs +
                " ms (" + ex + "); Aeron's own interval stays, failovers take ~100 ms longer");
            return current();
        }
    }

    /** The interval in force, in ns. */
    static long current()
    {
        return Configuration.PUBLICATION_SETUP_TIMEOUT_NS;
    }

    /** The idle heartbeat interval in force, in ns. */
    static long currentHeartbeat()
    {
        return Configuration.PUBLICATION_HEARTBEAT_TIMEOUT_NS;
    }

    private static void write(final String name, final long valueNs, final String what, final String otherwise)
    {
        try
        {
            Class.forName(Configuration.class.getName(), true, Configuration.class.getClassLoader());
            final Field field = Configuration.class.getField(name);
            UnsafeApi.putLong(UnsafeApi.staticFieldBase(field), UnsafeApi.staticFieldOffset(field), valueNs);
        }
        catch (final ReflectiveOperationException | RuntimeException | LinkageError ex)
        {
            System.err.println("[matchx] WARN cannot set the media driver's " + what + " to " +
                TimeUnit.NANOSECONDS.toMillis(valueNs) + " ms (" + ex + "); Aeron's own stays: " + otherwise);
        }
    }
}
