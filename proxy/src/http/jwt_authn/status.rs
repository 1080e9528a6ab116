//! The outcomes of verifying a JWT, with the messages Envoy's JWT library gives them: they are
//! the body of a 401/403 and part of the response code details.
//! Envoy: source/common/jwt/status.cc (the strings a client sees).

/// A verification outcome; `Ok` lets the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    JwtMissed,
    JwtNotYetValid,
    JwtExpired,
    JwtBadFormat,
    JwtHeaderParseErrorBadBase64,
    JwtHeaderParseErrorBadJson,
    JwtHeaderBadAlg,
    JwtHeaderNotImplementedAlg,
    JwtHeaderBadKid,
    JwtPayloadParseErrorBadBase64,
    JwtEd25519SignatureWrongLength,
    JwtPayloadParseErrorBadJson,
    JwtPayloadParseErrorIssNotString,
    JwtPayloadParseErrorSubNotString,
    JwtPayloadParseErrorIatNotInteger,
    JwtPayloadParseErrorIatOutOfRange,
    JwtPayloadParseErrorNbfNotInteger,
    JwtPayloadParseErrorNbfOutOfRange,
    JwtPayloadParseErrorExpNotInteger,
    JwtPayloadParseErrorExpOutOfRange,
    JwtPayloadParseErrorJtiNotString,
    JwtPayloadParseErrorAudNotString,
    JwtSignatureParseErrorBadBase64,
    JwtUnknownIssuer,
    JwtAudienceNotAllowed,
    JwtVerificationFail,
    JwksParseError,
    JwksNoKeys,
    JwksBadKeys,
    JwksNoValidKeys,
    JwksKidAlgMismatch,
    JwksFetchFail,
}

impl Status {
    /// The message Envoy sends as the body of its reply.
    pub fn message(self) -> &'static str {
        use Status::*;
        match self {
            Ok => "OK",
            JwtMissed => "Jwt is missing",
            JwtNotYetValid => "Jwt not yet valid",
            JwtExpired => "Jwt is expired",
            JwtBadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            JwtHeaderParseErrorBadBase64 => "Jwt header is an invalid Base64url encoded",
            JwtHeaderParseErrorBadJson => "Jwt header is an invalid JSON",
            JwtHeaderBadAlg => "Jwt header [alg] field is required and must be a string",
            JwtHeaderNotImplementedAlg => "Jwt header [alg] is not supported",
            JwtHeaderBadKid => "Jwt header [kid] field is not a string",
            JwtPayloadParseErrorBadBase64 => "Jwt payload is an invalid Base64url encoded",
            JwtEd25519SignatureWrongLength => "Jwt ED25519 signature is wrong length",
            JwtPayloadParseErrorBadJson => "Jwt payload is an invalid JSON",
            JwtPayloadParseErrorIssNotString => "Jwt payload [iss] field is not a string",
            JwtPayloadParseErrorSubNotString => "Jwt payload [sub] field is not a string",
            JwtPayloadParseErrorIatNotInteger => "Jwt payload [iat] field is not an integer",
            JwtPayloadParseErrorIatOutOfRange => {
                "Jwt payload [iat] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorNbfNotInteger => "Jwt payload [nbf] field is not an integer",
            JwtPayloadParseErrorNbfOutOfRange => {
                "Jwt payload [nbf] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorExpNotInteger => "Jwt payload [exp] field is not an integer",
            JwtPayloadParseErrorExpOutOfRange => {
                "Jwt payload [exp] field is not a positive 64 bit integer"
            }
            JwtPayloadParseErrorJtiNotString => "Jwt payload [jti] field is not a string",
            JwtPayloadParseErrorAudNotString => {
                "Jwt payload [aud] field is not a string or string list"
            }
            JwtSignatureParseErrorBadBase64 => "Jwt signature is an invalid Base64url encoded",
            JwtUnknownIssuer => "Jwt issuer is not configured",
            JwtAudienceNotAllowed => "Audiences in Jwt are not allowed",
            JwtVerificationFail => "Jwt verification fails",
            JwksParseError => "Jwks is an invalid JSON",
            JwksNoKeys => "Jwks does not have [keys] field",
            JwksBadKeys => "[keys] in Jwks is not an array",
            JwksNoValidKeys => "Jwks doesn't have any valid public key",
            JwksKidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            JwksFetchFail => "Jwks remote fetch is failed",
        }
    }

    /// Envoy's response code details for a denial: `jwt_authn_access_denied{<message with
    /// spaces as underscores>}`.
    pub fn details(self) -> String {
        format!(
            "jwt_authn_access_denied{{{}}}",
            self.message().replace(' ', "_")
        )
    }
}
