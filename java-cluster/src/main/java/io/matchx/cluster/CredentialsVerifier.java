package io.matchx.cluster;

/**
 * Verifies a client's credentials (an access token) at connect; implemented in Python (PyNaCl
 * verifies Ed25519 in ~60 us, the JDK's own in ~1 ms). All methods abstract: see ServiceHandler.
 */
public interface CredentialsVerifier
{
    /**
     * @return {@code 0x00} followed by the encoded principal when the credentials are good, or
     * {@code 0x01} followed by a UTF-8 reason code (e.g. {@code expired}) when they are not.
     */
    byte[] verify(byte[] credentials, long nowMs);
}
