/* llama2.c checkpoint (legacy .bin) + llama2.c tokenizer -> GGUF with
 * general.architecture "llama" and a SentencePiece-style "llama" tokenizer,
 * loadable by llama.cpp as well. Formats: ../shared/models/stories260K/PROVENANCE.md.
 * out_type: PAM_DT_F32, F16, BF16, Q8_0, Q4_0 (Q4_K/Q6_K when the row length
 * is a multiple of 256); norms always stay F32. */
#ifndef PAM_MODEL_CONVERT_H
#define PAM_MODEL_CONVERT_H

#include "kernels/dtype.h"
#include "pam.h"

pam_status pam_convert_llama2c(const char *checkpoint_path, const char *tokenizer_path,
                               const char *out_path, pam_dtype out_type);

#endif
