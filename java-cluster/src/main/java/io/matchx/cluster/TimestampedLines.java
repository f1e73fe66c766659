package io.matchx.cluster;

import java.io.BufferedOutputStream;
import java.io.FileDescriptor;
import java.io.FileOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.time.ZoneId;
import java.time.format.DateTimeFormatter;

/**
 * Standard error whose every line starts with the wall-clock time, as the Python side's log lines
 * do ({@code logging}'s asctime: {@code 2026-12-07 18:25:21,123}).
 *
 * <p>Why: a member's and a worker's Java lines (start phases, elections, Aeron's errors through our
 * error handlers) said only milliseconds since their process started, so an operator could not
 * line them up with the Python lines of the same process, another member's log or an incident's
 * time. One wrapper around the stream stamps every writer, ours and Aeron's, with no change at the
 * places that write.
 */
public final class TimestampedLines extends OutputStream
{
    private static final DateTimeFormatter FORMAT =
        DateTimeFormatter.ofPattern("yyyy-MM-dd HH:mm:ss,SSS ").withZone(ZoneId.systemDefault());

    private final OutputStream out;
    private boolean lineStart = true;

    TimestampedLines(final OutputStream out)
    {
        this.out = out;
    }

    /** From here on, every line this JVM writes to standard error starts with the time. */
    public static synchronized void stampStandardError()
    {
        if (!(System.err instanceof Stamped))
        {
            System.err.flush();
            System.setErr(new Stamped(new TimestampedLines(
                new BufferedOutputStream(new FileOutputStream(FileDescriptor.err), 8192))));
        }
    }

    static byte[] stamp()
    {
        return FORMAT.format(java.time.Instant.now()).getBytes(StandardCharsets.US_ASCII);
    }

    @Override
    public synchronized void write(final int b) throws IOException
    {
        if (lineStart)
        {
            out.write(stamp());
            lineStart = false;
        }
        out.write(b);
        lineStart = b == '\n';
    }

    @Override
    public synchronized void write(final byte[] b, final int off, final int len) throws IOException
    {
        int from = off;
        final int end = off + len;
        while (from < end)
        {
            if (lineStart)
            {
                out.write(stamp());
                lineStart = false;
            }
            int to = from;
            while (to < end && b[to] != '\n')
            {
                to++;
            }
            if (to < end)
            {
                to++; // the newline belongs to this line
                lineStart = true;
            }
            out.write(b, from, to - from);
            from = to;
        }
    }

    @Override
    public synchronized void flush() throws IOException
    {
        out.flush();
    }

    /** Marks the installed stream, so that a second install does not stamp twice. */
    private static final class Stamped extends PrintStream
    {
        Stamped(final OutputStream out)
        {
            super(out, true, StandardCharsets.UTF_8);
        }
    }
}
