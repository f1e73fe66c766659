package io.matchx.cluster;

import org.junit.jupiter.api.Test;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

class TimestampedLinesTest
{
    private static final String STAMP = "\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d,\\d{3} ";

    @Test
    void everyLineStartsWithTheTimeHoweverItIsWritten() throws IOException
    {
        final ByteArrayOutputStream sink = new ByteArrayOutputStream();
        final TimestampedLines lines = new TimestampedLines(sink);
        lines.write("[matchx member] INFO a\n[matchx member] WARN b\npart".getBytes(StandardCharsets.UTF_8));
        lines.write(" of c".getBytes(StandardCharsets.UTF_8));
        lines.write('\n');
        lines.write('d');
        lines.write('\n');
        final String[] out = sink.toString(StandardCharsets.UTF_8).split("\n", -1);
        assertEquals(5, out.length, sink.toString(StandardCharsets.UTF_8));
        assertTrue(out[0].matches(STAMP + "\\[matchx member\\] INFO a"), out[0]);
        assertTrue(out[1].matches(STAMP + "\\[matchx member\\] WARN b"), out[1]);
        assertTrue(out[2].matches(STAMP + "part of c"), out[2]);
        assertTrue(out[3].matches(STAMP + "d"), out[3]);
        assertEquals("", out[4], "nothing stamped before a line has begun");
    }
}
