/*
 * model.h - the object behind moe_model: the files, one tensor table over
 * all of them, the family's MoE configuration, and the per-layer binding of
 * checkpoint tensors to libmoe's router / routed experts / shared experts.
 *
 * Files:
 *   model.c         opening (HF directory, .safetensors, .gguf), the tensor table,
 *                   info and tensor listing
 *   family-hf.c     config.json and tensor names of the Hugging Face families
 *   family-gguf.c   GGUF architectures (metadata keys, blk.N.* names)
 *   model-layer.c   moe_model_layer_create: weights converted or borrowed
 */
#ifndef MOE_IO_MODEL_H
#define MOE_IO_MODEL_H

#include "gguf.h"
#include "io.h"
#include "json.h"
#include "safetensors.h"

/* One stored tensor, whatever the container. */
typedef struct moe__mtensor {
    const char    *name;      /* NUL-terminated                                      */
    size_t         name_len;
    moe__dtype     dtype;
    int32_t        n_dims;
    int64_t        shape[8];  /* slowest first (GGUF ne reversed)                    */
    const uint8_t *data;      /* in the mapping                                      */
    uint64_t       nbytes;
    int32_t        file;
    uint64_t       offset;    /* in its file                                         */
} moe__mtensor;

typedef enum moe__family {
    MOE__FAM_MIXTRAL, MOE__FAM_QWEN2_MOE, MOE__FAM_QWEN3_MOE, MOE__FAM_OLMOE,
    MOE__FAM_DEEPSEEK_V2, MOE__FAM_DEEPSEEK_V3, MOE__FAM_GPT_OSS, MOE__FAM_LLAMA4,
    MOE__FAM_COUNT
} moe__family;

extern const char *const moe__family_names[MOE__FAM_COUNT];

/* The MoE hyperparameters, the same for every MoE layer. */
typedef struct moe__mcfg {
    moe__family    family;
    int32_t        n_layers;
    int32_t        n_experts, top_k;
    int64_t        d_model, d_ff;
    int32_t        n_shared;        /* shared experts (fused along d_ff)             */
    int64_t        d_ff_shared;     /* total                                         */
    int            shared_gate;
    moe_scoring    scoring;
    int            renormalize;
    int32_t        n_group, topk_group;
    float          routed_scaling_factor;
    moe_activation activation;
    float          swiglu_alpha, swiglu_limit;
    uint8_t       *is_moe;          /* (n_layers) owned                              */
    /* GPTQ / AWQ checkpoints (quantization_config): the experts' projections
     * are qweight / scales / qzeros (/ g_idx) tensors in the quantizers' own
     * layouts, which are libmoe's INT4_GPTQ, INT8_GPTQ and INT4_AWQ. */
    int            quant;           /* MOE__QUANT_*                                  */
    int32_t        quant_bits, quant_group;
    /* MOE__QUANT_SCALED (ModelOpt, compressed-tensors): the experts'
     * projections are weight (or weight_packed) + weight_scale (+
     * weight_scale_2, input_scale) tensors, run as quant_format. */
    moe_format     quant_format;    /* NVFP4, FP8_TENSOR, FP8_CHANNEL, INT4_GPTQ     */
    int            quant_static_in; /* FP8_TENSOR: input_scale tensors required      */
    int            quant_gidx;      /* INT*_GPTQ from compressed-tensors with actorder
                                     * group: weight_g_idx tensors required          */
    int            quant_nvfp4_ct;  /* NVFP4 from compressed-tensors: weight_packed,
                                     * and weight_global_scale (the reciprocal of
                                     * ModelOpt's weight_scale_2)                    */
    char           quant_name[96];  /* "modelopt NVFP4", ... for messages            */
} moe__mcfg;

enum { MOE__QUANT_NONE = 0, MOE__QUANT_GPTQ, MOE__QUANT_AWQ, MOE__QUANT_SCALED };

/* One ModelOpt / compressed-tensors projection of an expert: weight (or
 * weight_packed), weight_scale, weight_scale_2 or weight_global_scale
 * (NVFP4), input_scale (static FP8) and weight_g_idx (int groups in
 * activation order), the last three NULL when absent; for NVFP4 the global
 * scale s2 gives as a multiplier (bind_sproj knows each producer's
 * convention). */
typedef struct moe__sproj {
    const moe__mtensor *w, *s, *s2, *in, *g;
    float               gscale;
} moe__sproj;

/* One GPTQ / AWQ projection: qweight, scales, qzeros and g_idx (GPTQ, may be
 * NULL) tensors. */
typedef struct moe__qproj {
    const moe__mtensor *q, *s, *z, *g;
} moe__qproj;

/* How a layer's routed expert weights are stored. */
typedef enum moe__layout {
    MOE__LAYOUT_SPLIT,      /* gate, up, down as (rows, cols) matrices: per expert, or stacked */
    MOE__LAYOUT_FUSED,      /* w13 (E, 2I, H) and w2 (E, H, I) already libmoe's               */
    MOE__LAYOUT_TRANSPOSED, /* gate_up (E, H, 2I) and down (E, I, H): gpt-oss, Llama-4 bf16   */
} moe__layout;

/* The checkpoint tensors of one MoE layer. Arrays of E pointers hold, for
 * stacked tensors, the same pointer E times (expert e = slice e). */
typedef struct moe__mlayer {
    int32_t             layer;
    const moe__mtensor *router_w, *router_b, *corr_b;
    moe__layout         layout;
    int                 stacked;     /* SPLIT: (E, rows, cols) tensors                  */
    int                 interleave;  /* SPLIT into SWIGLU_OAI: rows 2i gate, 2i+1 up    */
    const moe__mtensor *w13, *w13_s, *w2, *w2_s;             /* FUSED / TRANSPOSED      */
    const moe__mtensor **gate, **up, **down;                 /* SPLIT, (E) each         */
    const moe__mtensor **gate_s, **up_s, **down_s;           /* FP8 block scales or NULL */
    moe__qproj         *qgate, *qup, *qdown;                 /* SPLIT GPTQ / AWQ, (E) each,
                                                                or NULL; gate[e] = qgate[e].q */
    moe__qproj          sh_q[3];                             /* shared gate, up, down      */
    moe__sproj         *sgate, *sup, *sdown;                 /* SPLIT ModelOpt / compressed-
                                                                tensors, (E) each, or NULL */
    moe__sproj          sh_s[3];                             /* shared gate, up, down      */
    const moe__mtensor *b13, *b_gate, *b_up, *b2;            /* expert biases or NULL   */
    const moe__mtensor *sh_gate, *sh_up, *sh_down;           /* shared MLP or NULL      */
    const moe__mtensor *sh_gate_s, *sh_up_s, *sh_down_s;
    const moe__mtensor *sh_gate_w;                           /* shared sigmoid gate     */
    moe_format          format;      /* routed experts; MOE_FORMAT_COUNT = none fits     */
    moe_format          format2;     /* their W2 (down): GGUF K-quant mixes differ       */
    moe_format          sh_format, sh_format2; /* shared MLP: W13 and W2                 */
} moe__mlayer;

struct moe_model {
    moe__io_limits  lim;
    int             is_gguf;
    int32_t         n_files;
    moe__map       *maps;        /* (n_files)                                        */
    moe__st_file   *st;          /* (n_files) safetensors headers                    */
    moe__gguf       gguf;
    moe__json       config;      /* config.json (safetensors)                        */
    moe__json       hfq;         /* hf_quant_config.json (ModelOpt), when present     */
    int             has_hfq;
    uint32_t        cfg_root;    /* the object holding the text model's keys         */
    char            arch[64];    /* GGUF general.architecture                        */
    const char     *prefix;      /* HF tensor name prefix ("model.layers.")          */
    moe__mtensor   *tensors;     /* (n_tensors)                                      */
    int64_t         n_tensors;
    moe__nameset    names;
    moe__mcfg       cfg;
    int             borrowed;    /* maps point at caller memory (fuzzing): no munmap */
};

/* Models held in memory, for the fuzz targets: a GGUF file, or a
 * config.json text plus one safetensors file. The buffers must outlive the
 * model. Same checks as moe_model_open. */
moe_status moe__model_open_gguf_buffer(const uint8_t *buf, uint64_t size, const moe_model_options *opts,
                                       moe_model **out, char *err, size_t errlen);
moe_status moe__model_open_st_buffer(const char *config, size_t config_len, const uint8_t *st,
                                     uint64_t st_size, const moe_model_options *opts, moe_model **out,
                                     char *err, size_t errlen);

/* The tensor with this name, or NULL. */
const moe__mtensor *moe__model_find(const moe_model *m, const char *name);
/* Element i of a plain (F32, F16, BF16) tensor as f32; a one-element tensor's
 * value at i = 0. Read with memcpy: file data may be unaligned. */
float moe__mtensor_f32(const moe__mtensor *t, int64_t i);
/* printf-style name lookup. */
const moe__mtensor *moe__model_findf(const moe_model *m, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Family binding: fill m->cfg from the configuration (HF config.json or GGUF
 * metadata). MOE_ERR_UNKNOWN_FAMILY, MOE_ERR_CONFIG. */
moe_status moe__hf_config(moe_model *m, char *err, size_t errlen);
moe_status moe__gguf_config(moe_model *m, char *err, size_t errlen);
/* Resolve layer L's tensors into *b (arrays allocated; moe__mlayer_free) and
 * check every shape against m->cfg. MOE_ERR_MISSING, MOE_ERR_SHAPE,
 * MOE_ERR_DTYPE. */
moe_status moe__hf_bind(const moe_model *m, int32_t layer, moe__mlayer *b, char *err, size_t errlen);
moe_status moe__gguf_bind(const moe_model *m, int32_t layer, moe__mlayer *b, char *err, size_t errlen);
moe_status moe__model_bind(const moe_model *m, int32_t layer, moe__mlayer *b, char *err, size_t errlen);
void       moe__mlayer_free(moe__mlayer *b);

/* Shared checks used by both bindings. */
moe_status moe__expect_shape(const moe__mtensor *t, int n_dims, const int64_t *shape,
                             char *err, size_t errlen);
#define MOE__SHAPE(t, ...) moe__expect_shape((t), (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
                                            (int64_t[]){__VA_ARGS__}, err, errlen)
/* The libmoe format of a stored weight type (with scales present for the
 * FP8 / MXFP4 safetensors cases); MOE_FORMAT_COUNT when none. */
moe_format moe__format_of(moe__dtype dt, int has_block_scales, int is_mxfp4_blocks);
/* Validates the common config fields (ranges, divisibility). */
moe_status moe__mcfg_check(const moe__mcfg *c, char *err, size_t errlen);

#endif /* MOE_IO_MODEL_H */
